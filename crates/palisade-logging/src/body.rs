//! The logged bodies, as palisade-core's observing middleware makes them.

use palisade_core::observe;

#[cfg(doc)]
use palisade_core::side::Client;
use palisade_core::side::Server;

use crate::policy::LoggingPolicy;

/// The response body of [`Logging`](crate::Logging) (`K`: [`Server`] or [`Client`]): forwards every frame unchanged, polls the inner body
/// inside the RPC's span (so a streaming handler's events nest under it), and writes the
/// finish event, beside the span, when the stream ends or the body is dropped.
pub type ResponseBody<B, K> = observe::ResponseBody<B, LoggingPolicy<K>>;

/// The request body a server-side [`Logging`](crate::Logging) hands its inner service:
/// every frame forwarded unchanged, each gRPC message counted for the finish event's
/// `grpc.request.messages` ([`RequestMessages`](crate::RequestMessages)).
pub type RequestBody<B> = observe::RequestBody<B, LoggingPolicy<Server>>;
