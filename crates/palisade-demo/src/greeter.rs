//! The reference Greeter service.

use std::{fmt, pin::Pin, task::Poll, time::Duration};

use futures_util::Stream;
use tonic::{Code, Request, Response, Status};

use crate::pb::{HelloReply, HelloRequest, greeter_server};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

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
/// `trace_id` and `subject` in the replies come from hooks, so this crate depends on neither
/// OpenTelemetry nor a JWT library: see [`Greeter::with_trace_id`] and
/// [`Greeter::with_subject`].
#[derive(Clone, Copy, Default)]
pub struct Greeter {
    trace_id: Option<fn() -> String>,
    subject: Option<fn(&http::Extensions) -> Option<String>>,
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

    /// The generated tonic service for this Greeter.
    pub fn into_service(self) -> greeter_server::GreeterServer<Self> {
        greeter_server::GreeterServer::new(self)
    }

    fn reply(&self, name: &str, subject: &str) -> HelloReply {
        HelloReply {
            message: format!("Hello, {name}!"),
            trace_id: self.trace_id.map(|f| f()).unwrap_or_default(),
            subject: subject.to_owned(),
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
            .finish()
    }
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
        let subject = self.subject_of(&request);
        let hello = request.into_inner();
        if hello.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hello.delay_ms.into())).await;
        }
        if hello.panic {
            panic!("demo panic: SayHello was asked to panic");
        }
        if hello.fail_code != 0 {
            return Err(failure(hello.fail_code));
        }
        Ok(Response::new(self.reply(&hello.name, &subject)))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        let subject = self.subject_of(&request);
        let hello = request.into_inner();
        if hello.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hello.delay_ms.into())).await;
        }
        let greeter = *self;
        if hello.panic {
            // One reply; then `Pending` once, so that tonic's encoder sends the reply it
            // buffered (it polls on while the stream is ready); then the panic, at the next poll.
            let mut first = Some(greeter.reply(&hello.name, &subject));
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
            .map(move |_| Ok(greeter.reply(&hello.name, &subject)))
            .chain(futures_util::stream::iter(
                (hello.fail_code != 0).then(|| Err(failure(hello.fail_code))),
            ));
        Ok(Response::new(Box::pin(replies)))
    }
}

use futures_util::StreamExt as _;
