//! The bodies [`Metrics`](crate::Metrics) hands on, as palisade-core's observing middleware
//! makes them, and what the inner service gets as its request body.

use bytes::Bytes;
use palisade_core::{
    Side,
    observe::{self, RequestBody as CoreRequestBody},
};

use crate::policy::MetricsPolicy;
pub use crate::policy::{RequestObserver, ResponseObserver};
pub use palisade_core::observe::{MapRequestBody, ObservedRequest};

/// A request body as [`Metrics`](crate::Metrics) hands it on: frames unchanged, each gRPC
/// message counted (`msg_received` on a server, `msg_sent` on a client).
pub type RequestBody<B> = observe::RequestBody<B, MetricsPolicy>;

/// A response body as [`Metrics`](crate::Metrics) returns it: frames unchanged, each gRPC
/// message counted (`msg_sent` on a server, `msg_received` on a client), `handled` and the
/// handling time recorded at the end of the stream.
pub type ResponseBody<B> = observe::ResponseBody<B, MetricsPolicy>;

/// The inner service gets a `tonic::body::Body` (the observed body boxed), as
/// `tonic::transport::Channel` requires; see
/// [`MetricsLayer::with_tonic_body`](crate::MetricsLayer::with_tonic_body).
#[derive(Clone, Copy, Debug, Default)]
pub struct TonicBody;

impl<B> MapRequestBody<B, MetricsPolicy> for TonicBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    type Body = tonic::body::Body;

    fn map_body(body: B, side: Side, observer: Option<RequestObserver>) -> Self::Body {
        let body = match observer {
            Some(observer) => CoreRequestBody::<B, MetricsPolicy>::observed(body, side, observer),
            None => CoreRequestBody::passed(body),
        };
        tonic::body::Body::new(body)
    }
}
