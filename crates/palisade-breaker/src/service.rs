//! [`Breaker`], its response future and body: palisade-core's admission middleware with the
//! breaker's [`BreakerAdmission`].

use palisade_core::admit;

use crate::admission::BreakerAdmission;

/// Circuit breaking around a gRPC service or client; made by
/// [`BreakerLayer`](crate::BreakerLayer).
///
/// A call on a closed circuit goes through and its outcome — read at the end of the response
/// stream — feeds the circuit. On an open circuit, or a half-open one whose probes are all in
/// flight, the call is answered at once with a trailers-only `UNAVAILABLE` ("circuit open")
/// without reaching the inner service. The inner service's error type is kept.
///
/// It is palisade-core's [`Admit`](admit::Admit) with the breaker's [`BreakerAdmission`],
/// so the inner service must be `Clone` (tonic's routes and `Channel` are). `K` is the side
/// ([`Server`](palisade_core::side::Server) or [`Client`](palisade_core::side::Client)), `H`
/// the hook. The state of a circuit is read from the layer
/// ([`BreakerLayer::state`](crate::BreakerLayer::state)), or from the service:
/// `breaker.admission().state(name)`.
pub type Breaker<S, K, H = ()> = admit::Admit<S, BreakerAdmission<K, H>>;

/// The response future of a [`Breaker`] of side `K` around `S` called with
/// `Request<ReqBody>`: the inner call watched to its end, or an immediate rejection
/// ([`is_rejected`](admit::ResponseFuture::is_rejected)).
pub type ResponseFuture<S, ReqBody, K, H = ()> =
    admit::ResponseFuture<S, BreakerAdmission<K, H>, ReqBody>;

/// The response body of a [`Breaker`] of side `K`: the inner body, watched to its end so the
/// call's real outcome reaches its circuit.
pub type ResponseBody<B, K, H = ()> = admit::ResponseBody<B, BreakerAdmission<K, H>>;
