//! Shared pieces of Palisade's criterion benches: driving a service and polling its response
//! body to the trailers, in-process and without a runtime, the way a server would.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use http_body::Body;
use tower_service::Service;

/// Calls `service` once with `request`, then polls the response body to its end, returning
/// how many frames it had. The service and body must be ready at once (in-process benches).
pub fn call_to_trailers<S, ReqBody, ResBody>(
    service: &mut S,
    request: http::Request<ReqBody>,
) -> usize
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Debug,
    ResBody: Body,
    ResBody::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        service.poll_ready(&mut cx).is_ready(),
        "benched services are always ready"
    );
    let response = match pin!(service.call(request)).poll(&mut cx) {
        Poll::Ready(result) => result.expect("the benched service answers"),
        Poll::Pending => panic!("benched services answer at once"),
    };
    let mut body = pin!(response.into_body());
    let mut frames = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                frame.expect("the benched body has no error");
                frames += 1;
            }
            Poll::Ready(None) => return frames,
            Poll::Pending => panic!("benched bodies are ready at once"),
        }
    }
}

/// A realistic unary gRPC request: the method path, gRPC headers, an `authorization` bearer
/// token and a `traceparent`.
pub fn unary_request() -> http::Request<palisade_demo::frames::GrpcBody> {
    http::Request::builder()
        .method("POST")
        .uri(palisade_demo::SAY_HELLO)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "1S")
        .header(
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl",
        )
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(palisade_demo::frames::GrpcBody::new(
            [palisade_demo::frames::message(b"\x0a\x03Ada")],
            None,
        ))
        .expect("a valid request")
}
