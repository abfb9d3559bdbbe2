//! The logging service, as palisade-core's observing middleware makes it.

use palisade_core::Observe;
#[cfg(doc)]
use palisade_core::side::{Client, Server};

use crate::policy::{LoggedRequest, LoggingPolicy};

/// Logs each RPC through its inner service; made by [`LoggingLayer`](crate::LoggingLayer):
/// palisade-core's [`Observe`] with this crate's [`LoggingPolicy`], see the
/// [crate docs](crate).
///
/// On a server (`K` = [`Server`]) the inner service receives request bodies wrapped in a
/// [`RequestBody`](crate::RequestBody) that counts request messages; on a client (`K` =
/// [`Client`]) requests pass unchanged ([`LoggedRequest`]).
pub type Logging<S, K> = Observe<S, LoggingPolicy<K>, LoggedRequest>;
