//! The logged response future, as palisade-core's observing middleware makes it.

use palisade_core::observe;

use crate::{layer::ServerSide, policy::LoggingPolicy};

/// The response future of [`Logging`](crate::Logging) (`K`: [`ServerSide`] or
/// [`ClientSide`](crate::ClientSide)): polls the inner future inside the RPC's span; the
/// RPC's finish event is written, beside the span, when the response body ends (or at once
/// for a trailers-only response, an error, or a drop). A call the layer does not log passes
/// through untouched.
pub type ResponseFuture<F, K = ServerSide> = observe::ResponseFuture<F, LoggingPolicy<K>>;
