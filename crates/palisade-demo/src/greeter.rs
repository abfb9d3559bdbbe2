//! The reference Greeter service.

use std::{fmt, future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use futures_util::Stream;
use tonic::{Code, Request, Response, Status};

use crate::pb::{HelloReply, HelloRequest, greeter_server};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

/// The upstream Greeter's `SayHello`, as a `forward = true` call makes it: see
/// [`Greeter::with_upstream`].
pub type Upstream = Arc<
    dyn Fn(
            Request<HelloRequest>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<HelloReply>, Status>> + Send>>
        + Send
        + Sync,
>;

/// The demo Greeter, honouring every request field:
///
/// - `name`: the reply says `Hello, {name}!`;
/// - `count`: `SayHelloStream` sends this many replies (0 means 1);
/// - `fail_code`: non-zero, the handler answers with this gRPC code instead — `SayHello` and a
///   `SayHelloStream` with `count` 0 fail at once (a trailers-only response); a
///   `SayHelloStream` with `count` > 0 sends its replies first, then ends with the code in the
///   trailers;
/// - `delay_ms`: the handler sleeps this long first;
/// - `panic` (v2): the handler panics — `SayHello` before answering (after `delay_ms`),
///   `SayHelloStream` after sending exactly one reply (while its stream is polled for the
///   second), as a handler with a bug would; behind no recovery layer, tonic drops the call.
///
/// - `forward`: with an upstream ([`Greeter::with_upstream`]), `SayHello` then makes the same
///   call (`forward` cleared, the caller's `authorization` relayed) to the upstream Greeter and
///   answers with its reply, `hops` + 1; without one it answers `FAILED_PRECONDITION`.
///
/// `deadline_ms` in the replies is what was left of the call's deadline when the handler
/// started: `palisade_deadline::current()` when a deadline layer made it current, else the
/// request's `grpc-timeout` header, else 0; `previous_attempts` is the request's
/// `grpc-previous-rpc-attempts` (0 if absent); `hops` is 1.
///
/// `trace_id` and `subject` in the replies come from hooks, so this crate depends on neither
/// OpenTelemetry nor a JWT library: see [`Greeter::with_trace_id`] and
/// [`Greeter::with_subject`].
#[derive(Clone, Default)]
pub struct Greeter {
    trace_id: Option<fn() -> String>,
    subject: Option<fn(&http::Extensions) -> Option<String>>,
    upstream: Option<Upstream>,
}

impl Greeter {
    /// A Greeter with no hooks: `trace_id` and `subject` stay empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills `HelloReply.trace_id` from the context the handler runs in.
    #[must_use]
    pub fn with_trace_id(mut self, trace_id: fn() -> String) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// Fills `HelloReply.subject` from the request extensions (where an auth layer put claims).
    #[must_use]
    pub fn with_subject(mut self, subject: fn(&http::Extensions) -> Option<String>) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Where `forward = true` calls go: the upstream Greeter's `SayHello` (through whatever
    /// client stack `upstream` calls it with).
    #[must_use]
    pub fn with_upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// The generated tonic service for this Greeter.
    pub fn into_service(self) -> greeter_server::GreeterServer<Self> {
        greeter_server::GreeterServer::new(self)
    }

    fn reply(&self, name: &str, call: &CallFacts) -> HelloReply {
        HelloReply {
            message: format!("Hello, {name}!"),
            trace_id: self.trace_id.map(|f| f()).unwrap_or_default(),
            subject: call.subject.clone(),
            previous_attempts: call.previous_attempts,
            deadline_ms: call.deadline_ms,
            hops: 1,
        }
    }

    fn facts_of<T>(&self, request: &Request<T>) -> CallFacts {
        CallFacts {
            subject: self.subject_of(request),
            previous_attempts: request
                .metadata()
                .get("grpc-previous-rpc-attempts")
                .and_then(|value| value.to_str().ok()?.parse().ok())
                .unwrap_or(0),
            deadline_ms: deadline_ms(request),
        }
    }

    fn subject_of<T>(&self, request: &Request<T>) -> String {
        self.subject
            .and_then(|f| f(request.extensions()))
            .unwrap_or_default()
    }
}

impl fmt::Debug for Greeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Greeter")
            .field("trace_id", &self.trace_id.is_some())
            .field("subject", &self.subject.is_some())
            .field("upstream", &self.upstream.is_some())
            .finish()
    }
}

/// What a reply says of the call it answers, read when the handler starts.
#[derive(Clone, Debug)]
struct CallFacts {
    subject: String,
    previous_attempts: u32,
    deadline_ms: u64,
}

/// Milliseconds left of the call's deadline: the current one when a deadline layer made it
/// current, else the caller's `grpc-timeout`; 0 when there is none.
fn deadline_ms<T>(request: &Request<T>) -> u64 {
    let left = palisade_deadline::current()
        .map(|deadline| deadline.remaining())
        .or_else(|| {
            let value = request.metadata().get("grpc-timeout")?;
            let value = http::HeaderValue::from_bytes(value.as_bytes()).ok()?;
            let mut headers = http::HeaderMap::new();
            headers.insert(palisade_core::headers::GRPC_TIMEOUT, value);
            palisade_core::deadline::grpc_timeout(&headers)
        })
        .unwrap_or_default();
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}

fn failure(fail_code: i32) -> Status {
    let code = Code::from_i32(fail_code);
    Status::new(code, format!("demo failure: {}", code.description()))
}

#[tonic::async_trait]
impl greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let facts = self.facts_of(&request);
        let authorization = request.metadata().get("authorization").cloned();
        let hello = request.into_inner();
        if hello.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hello.delay_ms.into())).await;
        }
        if hello.panic {
            panic!("demo panic: SayHello was asked to panic");
        }
        if hello.forward {
            let Some(upstream) = &self.upstream else {
                return Err(Status::failed_precondition("no upstream to forward to"));
            };
            let mut forwarded = Request::new(HelloRequest {
                forward: false,
                ..hello
            });
            if let Some(authorization) = authorization {
                forwarded
                    .metadata_mut()
                    .insert("authorization", authorization);
            }
            let mut reply = upstream(forwarded).await?.into_inner();
            reply.hops += 1;
            return Ok(Response::new(reply));
        }
        if hello.fail_code != 0 {
            return Err(failure(hello.fail_code));
        }
        Ok(Response::new(self.reply(&hello.name, &facts)))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        let facts = self.facts_of(&request);
        let hello = request.into_inner();
        if hello.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hello.delay_ms.into())).await;
        }
        let greeter = self.clone();
        if hello.panic {
            // One reply; then `Pending` once, so that tonic's encoder sends the reply it
            // buffered (it polls on while the stream is ready); then the panic, at the next poll.
            let mut first = Some(greeter.reply(&hello.name, &facts));
            let mut flushed = false;
            let replies = futures_util::stream::poll_fn(move |cx| {
                if let Some(reply) = first.take() {
                    return Poll::Ready(Some(Ok(reply)));
                }
                if !flushed {
                    flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                panic!("demo panic: SayHelloStream was asked to panic after one reply")
            });
            return Ok(Response::new(Box::pin(replies)));
        }
        if hello.fail_code != 0 && hello.count == 0 {
            return Err(failure(hello.fail_code));
        }
        let count = hello.count.max(1);
        let replies = futures_util::stream::iter(0..count)
            .map(move |_| Ok(greeter.reply(&hello.name, &facts)))
            .chain(futures_util::stream::iter(
                (hello.fail_code != 0).then(|| Err(failure(hello.fail_code))),
            ));
        Ok(Response::new(Box::pin(replies)))
    }
}

use futures_util::StreamExt as _;
