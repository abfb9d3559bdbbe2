//! [`ConcurrencyLimit`], its response future and body: palisade-core's admission middleware
//! with the limit's [`LimitAdmission`].

use palisade_core::admit;

use crate::admission::LimitAdmission;

/// An in-flight limit around a gRPC service or client; made by
/// [`LimitLayer`](crate::LimitLayer).
///
/// Named as tower names its own (`tower::limit::ConcurrencyLimit`): `Limit` is taken in
/// Palisade's prelude by palisade-ratelimit's `Limit`, a rate limit.
///
/// A call under the limit goes through holding a [`Permit`](crate::Permit) until its response
/// stream ends; a call over it is answered at once with a trailers-only `RESOURCE_EXHAUSTED`
/// (or waits in the queue), without reaching the inner service. The inner service's error type
/// is kept; it must be `Clone` (tonic's routes and `Channel` are).
pub type ConcurrencyLimit<S, K> = admit::Admit<S, LimitAdmission<K>>;

/// The response future of a [`ConcurrencyLimit`] of side `K` around `S` called with
/// `Request<ReqBody>`: the inner call with its permit, a wait in the queue, or an immediate
/// rejection ([`is_rejected`](admit::ResponseFuture::is_rejected)).
pub type ResponseFuture<S, ReqBody, K> = admit::ResponseFuture<S, LimitAdmission<K>, ReqBody>;

/// The response body of a [`ConcurrencyLimit`] of side `K`: the inner body, holding the call's
/// permit until it ends.
pub type ResponseBody<B, K> = admit::ResponseBody<B, LimitAdmission<K>>;
