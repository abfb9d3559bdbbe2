//! Driving one RPC in-process: the handler behind every layer, and polling a call to its
//! trailers on a no-op waker.

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
};

use http::{HeaderValue, Request, Response, header::CONTENT_TYPE};
use http_body::Body;
use palisade_core::Code;
use palisade_demo::frames::GrpcBody;
use tower_service::Service;

/// Calls `service` once with `request` (after `poll_ready`), then polls the response body to
/// its end, returning how many frames it had (data and trailers). The service, its future and
/// the body must be ready at once: every in-process bench is.
pub fn call_to_trailers<S, ReqBody, ResBody>(service: &mut S, request: Request<ReqBody>) -> usize
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: std::fmt::Debug,
    ResBody: Body,
    ResBody::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(ready) => ready.expect("the benched service is ready"),
        Poll::Pending => panic!("benched services are ready at once"),
    }
    let response = match pin!(service.call(request)).poll(&mut cx) {
        Poll::Ready(result) => result.expect("the benched service answers"),
        Poll::Pending => panic!("benched services answer at once"),
    };
    let mut body = pin!(response.into_body());
    let mut frames = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                black_box(frame.expect("the benched body has no error"));
                frames += 1;
            }
            Poll::Ready(None) => return frames,
            Poll::Pending => panic!("benched bodies are ready at once"),
        }
    }
}

/// The protobuf-encoded `HelloReply { message: "Hello, Palisade" }` every handler answers.
pub const REPLY: &[u8] = b"\x0a\x0fHello, Palisade";

/// The service behind every in-process bench, bare or layered: it reads the request body to
/// its end (as a tonic handler decodes its request message, so layers that count request
/// messages do their work), then answers a unary gRPC response — `content-type:
/// application/grpc`, one `HelloReply` message, trailers with `grpc-status` — built fresh for
/// every call from palisade-demo's frames.
#[derive(Clone, Copy, Debug)]
pub struct Handler {
    code: Code,
}

impl Handler {
    /// Answers every call with OK.
    pub fn ok() -> Self {
        Self { code: Code::Ok }
    }

    /// Answers every call with `code` in the trailers (to open breakers).
    pub fn failing(code: Code) -> Self {
        Self { code }
    }

    fn respond(&self) -> Response<GrpcBody> {
        let mut response = Response::new(GrpcBody::unary(REPLY, self.code));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }
}

impl<B: Body> Service<Request<B>> for Handler {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = HandlerFuture<B>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        HandlerFuture {
            body: request.into_body(),
            handler: *self,
        }
    }
}

pin_project_lite::pin_project! {
    /// Reads the request body to its end, then answers.
    pub struct HandlerFuture<B> {
        #[pin]
        body: B,
        handler: Handler,
    }
}

impl<B: Body> Future for HandlerFuture<B> {
    type Output = Result<Response<GrpcBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(frame)) => {
                    black_box(frame.is_ok());
                }
                Poll::Ready(None) => return Poll::Ready(Ok(this.handler.respond())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// [`Handler`] answering with `tonic::body::Body`, the body type a tonic server's routes
/// answer with — for middleware that needs it (tower_governor builds its rejections as
/// `Response<tonic::body::Body>`). One allocation per call more than [`Handler`], paid by the
/// bare service of the same group too.
#[derive(Clone, Copy, Debug)]
pub struct TonicHandler(pub Handler);

impl<B: Body> Service<Request<B>> for TonicHandler {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures_util::future::MapOk<
        HandlerFuture<B>,
        fn(Response<GrpcBody>) -> Response<tonic::body::Body>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        fn boxed(response: Response<GrpcBody>) -> Response<tonic::body::Body> {
            response.map(tonic::body::Body::new)
        }
        self.0
            .call(request)
            .map_ok(boxed as fn(Response<GrpcBody>) -> Response<tonic::body::Body>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::Requests;

    #[test]
    fn a_call_ends_with_one_message_and_trailers() {
        let mut requests = Requests::server();
        assert_eq!(call_to_trailers(&mut Handler::ok(), requests.request()), 2);
        assert_eq!(
            call_to_trailers(&mut TonicHandler(Handler::ok()), requests.request()),
            2
        );
    }
}
