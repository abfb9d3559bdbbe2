//! The server service: palisade-core's [`Admit`] asking the layer's admission.

use palisade_core::admit::Admit;

use crate::{admission::RateLimitAdmission, mode::Plain};

/// Rate limits the calls to the inner service, answering calls over their quota with a
/// trailers-only rejection; made by [`RateLimitLayer`](crate::RateLimitLayer) (see the
/// [crate docs](crate)).
///
/// palisade-core's [`Admit`] with the [`RateLimitAdmission`]. In the default [`Plain`] mode
/// the inner service gets the request as it came and its response goes back with its frames
/// unchanged; in [`Metered`](crate::Metered) mode a
/// [`MeteredService`](crate::body::MeteredService) between them wraps the bodies for
/// per-message limits. The inner service must be `Clone` (tonic's routes are): a call whose
/// backend decides later takes the ready service with it and leaves a clone.
pub type RateLimit<S, M = Plain> = Admit<<M as crate::Mode>::Inner<S>, RateLimitAdmission>;
