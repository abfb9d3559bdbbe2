//! The server layer's response future.

use palisade_core::admit;

use crate::{admission::RateLimitAdmission, mode::Plain};

/// The response future of [`RateLimit`](crate::RateLimit): palisade-core's
/// [`admit::ResponseFuture`] — the inner service's future (its response headers gaining
/// `x-ratelimit-*` when configured), a trailers-only rejection, or, with a backend that
/// answers later, the wait for its decision (never boxed).
pub type ResponseFuture<S, B, M = Plain> =
    admit::ResponseFuture<<M as crate::Mode>::Inner<S>, RateLimitAdmission, B>;
