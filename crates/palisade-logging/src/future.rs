//! The logged response future, as palisade-core's observing middleware makes it.

use palisade_core::observe;

#[cfg(doc)]
use palisade_core::side::{Client, Server};

use crate::policy::LoggingPolicy;

/// The response future of [`Logging`](crate::Logging) (`K`: [`Server`] or [`Client`]): polls the inner future inside the RPC's span; the
/// RPC's finish event is written, beside the span, when the response body ends (or at once
/// for a trailers-only response, an error, or a drop). A call the layer does not log passes
/// through untouched.
pub type ResponseFuture<F, K> = observe::ResponseFuture<F, LoggingPolicy<K>>;
