//! The bodies [`Metrics`](crate::Metrics) hands on, as palisade-core's observing middleware
//! makes them, and what the inner service gets as its request body.
//!
//! What the inner service gets is decided by the layer's type, [`MetricsLayer<K,
//! R>`](crate::MetricsLayer):
//!
//! | layer | inner service's request body |
//! |---|---|
//! | `MetricsLayer<Server>` | [`RequestBody<B>`]: each request message counted (`msg_received`) |
//! | `MetricsLayer<Client>` | `B`, unchanged: the layer fits a tonic `Channel` |
//! | `MetricsLayer<Client, CountRequestMessages>` | [`RequestBody<B>`]: each request message counted (`msg_sent`); not a `tonic::body::Body`, so not a `Channel`'s |

use std::marker::PhantomData;

use palisade_core::{
    Side,
    observe::{self, MapRequestBody},
    side::{Client, Server},
};

use crate::policy::MetricsPolicy;
pub use crate::policy::{RequestObserver, ResponseObserver};

/// A request body as [`Metrics`](crate::Metrics) hands it on: frames unchanged, each gRPC
/// message counted (`msg_received` on a server, `msg_sent` on a client that
/// [counts its request messages](crate::MetricsBuilder::count_request_messages)).
pub type RequestBody<B> = observe::RequestBody<B, MetricsPolicy>;

/// A response body as [`Metrics`](crate::Metrics) returns it: frames unchanged, each gRPC
/// message counted (`msg_sent` on a server, `msg_received` on a client), `handled` and the
/// handling time recorded at the end of the stream.
pub type ResponseBody<B> = observe::ResponseBody<B, MetricsPolicy>;

/// A layer's request bodies as its side has them by default (the `R` of
/// [`MetricsLayer<K, R>`](crate::MetricsLayer)): on a server the inner service gets a
/// [`RequestBody`] counting the request messages; on a client it gets the request's own body,
/// unchanged, so the layer fits a tonic `Channel` (a unary or server-streaming call's one
/// request message is counted when the call starts, for a method whose type the registry
/// gives).
#[derive(Clone, Copy, Debug, Default)]
pub struct SideDefault;

/// A client layer's request bodies after
/// [`count_request_messages`](crate::MetricsBuilder::count_request_messages): the inner service
/// gets a [`RequestBody`] counting every request message (`msg_sent`), streams included. It
/// is not a `tonic::body::Body`, so such a layer does not fit a tonic `Channel` as it comes.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountRequestMessages;

/// What the inner service of a layer of side `K` with request bodies `R` ([`SideDefault`] or
/// [`CountRequestMessages`]) gets as its request body: palisade-core's
/// [`MapRequestBody`] for [`Metrics<S, K, R>`](crate::Metrics).
pub struct ForSide<K, R = SideDefault>(PhantomData<fn() -> (K, R)>);

impl<K, R> std::fmt::Debug for ForSide<K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForSide")
    }
}

/// Observed: the request messages are counted.
fn observed<B>(body: B, side: Side, observer: Option<RequestObserver>) -> RequestBody<B> {
    match observer {
        Some(observer) => RequestBody::observed(body, side, observer),
        None => RequestBody::passed(body),
    }
}

impl<B> MapRequestBody<B, MetricsPolicy> for ForSide<Server, SideDefault> {
    type Body = RequestBody<B>;

    fn map_body(body: B, side: Side, observer: Option<RequestObserver>) -> Self::Body {
        observed(body, side, observer)
    }
}

impl<B> MapRequestBody<B, MetricsPolicy> for ForSide<Client, SideDefault> {
    type Body = B;

    fn map_body(body: B, _: Side, _: Option<RequestObserver>) -> B {
        // The policy asks for no request observer on such a layer.
        body
    }
}

impl<B> MapRequestBody<B, MetricsPolicy> for ForSide<Client, CountRequestMessages> {
    type Body = RequestBody<B>;

    fn map_body(body: B, side: Side, observer: Option<RequestObserver>) -> Self::Body {
        observed(body, side, observer)
    }
}

/// Whether a layer of side `K` whose request bodies are `Self` hands its inner service an
/// observed request body; implemented for the combinations a builder makes (sealed).
pub trait RequestBodies<K>: sealed::Sealed<K> {
    /// The inner service gets a [`RequestBody`](crate::RequestBody) counting the messages.
    #[doc(hidden)]
    const OBSERVED: bool;
}

mod sealed {
    pub trait Sealed<K> {}
    impl Sealed<super::Server> for super::SideDefault {}
    impl Sealed<super::Client> for super::SideDefault {}
    impl Sealed<super::Client> for super::CountRequestMessages {}
}

impl RequestBodies<Server> for SideDefault {
    const OBSERVED: bool = true;
}

impl RequestBodies<Client> for SideDefault {
    const OBSERVED: bool = false;
}

impl RequestBodies<Client> for CountRequestMessages {
    const OBSERVED: bool = true;
}
