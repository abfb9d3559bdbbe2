//! A trailers-only rejection built by core, served by a real tonic server, reaches a tonic
//! client as a `Status` with the same code, message and metadata.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use http::HeaderValue;
use palisade_core::{Code, Rejection};
use palisade_demo::pb::HelloRequest;
use tower_layer::Layer;
use tower_service::Service;

/// A layer that rejects every call with one rejection.
#[derive(Clone)]
struct RejectAll(Rejection);

impl<S> Layer<S> for RejectAll {
    type Service = RejectAllService;
    fn layer(&self, _: S) -> RejectAllService {
        RejectAllService(self.0.clone())
    }
}

#[derive(Clone)]
struct RejectAllService(Rejection);

impl<B> Service<http::Request<B>> for RejectAllService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        ready(Ok(self.0.to_response()))
    }
}

#[tokio::test]
async fn tonic_client_reads_the_rejection_as_a_status() {
    for (code, message) in [
        (Code::Unauthenticated, "missing bearer token"),
        (
            Code::ResourceExhausted,
            "rate limit: 100% used, ünïcode\nand a newline",
        ),
        (Code::Unavailable, "circuit open"),
    ] {
        let rejection = Rejection::new(code, message)
            .with_metadata("grpc-retry-pushback-ms", HeaderValue::from_static("250"));
        let server = palisade_demo::spawn(RejectAll(rejection)).await;
        let status = server
            .client()
            .await
            .say_hello(HelloRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), message);
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
    }
}
