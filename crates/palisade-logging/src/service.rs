//! The logging service, as palisade-core's observing middleware makes it.

use palisade_core::Observe;

use crate::{
    layer::ServerSide,
    policy::{LoggedRequest, LoggingPolicy},
};

/// Logs each RPC through its inner service; made by [`LoggingLayer`](crate::LoggingLayer):
/// palisade-core's [`Observe`] with this crate's [`LoggingPolicy`], see the
/// [crate docs](crate).
///
/// On a server (`K` = [`ServerSide`]) the inner service receives request bodies wrapped in a
/// [`RequestBody`](crate::RequestBody) that counts request messages; on a client (`K` =
/// [`ClientSide`](crate::ClientSide)) requests pass unchanged ([`LoggedRequest`]).
pub type Logging<S, K = ServerSide> = Observe<S, LoggingPolicy<K>, LoggedRequest>;
