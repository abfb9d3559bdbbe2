//! The server's response future and body: palisade-core's admission middleware's.

use palisade_core::admit;

use crate::{admission::JwtAdmission, claims::StandardClaims};

/// The response future of [`JwtAuth`](crate::JwtAuth) over an inner service `S` taking
/// `Request<B>`: the inner service's future, a rejection, or the wait for remote keys (a named
/// future, not a box).
pub type ResponseFuture<S, B, C = StandardClaims> = admit::ResponseFuture<S, JwtAdmission<C>, B>;

/// The response body of [`JwtAuth`](crate::JwtAuth): the inner body `B`, forwarded unchanged;
/// `B::default()` for a rejection.
pub type ResponseBody<B, C = StandardClaims> = admit::ResponseBody<B, JwtAdmission<C>>;
