//! A scripted backend for the breaker's in-process tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_core::{Code, Outcome};
use palisade_demo::frames::{message, trailers};
use tower::{Service, ServiceExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const HELLO: &str = "/palisade.demo.v1.Greeter/SayHello";

/// What the backend does with the next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// One message, then trailers with this code.
    Unary(Code),
    /// A trailers-only response with this code.
    TrailersOnly(Code),
    /// An error instead of a response (a transport error).
    Error,
    /// A response future that never resolves.
    Hang,
    /// One message, then a body that never ends.
    Stream,
    /// A unary `Ok` after this many milliseconds (tokio time).
    Delayed(u64),
    /// A unary answer with this code after this many milliseconds (tokio time).
    Late(u64, Code),
    /// A `200` with no `grpc-status` and a body already at its end.
    Empty,
}

#[derive(Clone, Default)]
pub struct Backend {
    state: Arc<BackendState>,
}

#[derive(Default)]
struct BackendState {
    calls: AtomicUsize,
    reply: Mutex<Option<Reply>>,
}

impl Backend {
    pub fn new(reply: Reply) -> Self {
        let backend = Backend::default();
        backend.set(reply);
        backend
    }

    pub fn set(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = Some(reply);
    }

    /// How many calls reached the backend.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

impl<B> Service<Request<B>> for Backend {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        let reply = self
            .state
            .reply
            .lock()
            .unwrap()
            .unwrap_or(Reply::Unary(Code::Ok));
        Box::pin(async move {
            match reply {
                Reply::Unary(code) => Ok(grpc_response(TestBody::unary(code))),
                Reply::TrailersOnly(code) => {
                    let mut response = grpc_response(TestBody::default());
                    response
                        .headers_mut()
                        .insert("grpc-status", HeaderValue::from(code as i32));
                    Ok(response)
                }
                Reply::Error => Err(std::io::Error::other("connection refused").into()),
                Reply::Hang => std::future::pending().await,
                Reply::Stream => Ok(grpc_response(TestBody::endless())),
                Reply::Delayed(ms) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Ok(grpc_response(TestBody::unary(Code::Ok)))
                }
                Reply::Late(ms, code) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Ok(grpc_response(TestBody::unary(code)))
                }
                Reply::Empty => Ok(grpc_response(TestBody::default())),
            }
        })
    }
}

fn grpc_response(body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// Data frames, then trailers or a wait that never ends.
#[derive(Debug, Default)]
pub struct TestBody {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    endless: bool,
}

impl TestBody {
    fn unary(code: Code) -> Self {
        TestBody {
            data: [message(b"hi")].into(),
            trailers: Some(trailers(code, None)),
            endless: false,
        }
    }

    fn endless() -> Self {
        TestBody {
            data: [message(b"hi")].into(),
            trailers: None,
            endless: true,
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.endless {
            return Poll::Pending;
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        !self.endless && self.data.is_empty() && self.trailers.is_none()
    }
}

pub fn request(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

/// Makes one call and reads it to its end: the code it got and its message.
pub async fn call<S, B>(service: &S, request: Request<()>) -> (Code, String)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Display,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = match service.clone().oneshot(request).await {
        Ok(response) => response,
        Err(error) => return (Code::Unavailable, format!("error: {error}")),
    };
    if let Some(outcome) = Outcome::from_response_head(response.status(), response.headers()) {
        return (
            outcome.code(),
            outcome.message().unwrap_or_default().into_owned(),
        );
    }
    let collected = response.into_body().collect().await.unwrap();
    let outcome = Outcome::from_trailers(collected.trailers().expect("trailers"));
    (
        outcome.code(),
        outcome.message().unwrap_or_default().into_owned(),
    )
}

/// A call of `HELLO`, read to its end.
pub async fn hello<S, B>(service: &S) -> (Code, String)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Display,
    B: Body,
    B::Error: std::fmt::Debug,
{
    call(service, request(HELLO)).await
}

pub fn open() -> (Code, String) {
    (Code::Unavailable, "circuit open".to_owned())
}
