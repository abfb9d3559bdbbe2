//! The server service.

use palisade_core::admit::Admit;

use crate::{admission::JwtAdmission, claims::StandardClaims};

/// The service [`JwtAuthLayer`](crate::JwtAuthLayer) wraps around an inner service:
/// palisade-core's [`Admit`] asking [`JwtAdmission`] about every RPC.
///
/// The inner service must be `Clone` (an RPC waiting for remote keys takes the ready service
/// with it); its error type is kept, its response body wrapped in [`ResponseBody`](crate::ResponseBody)
/// (a rejection is an ended `ResBody::default()`).
pub type JwtAuth<S, C = StandardClaims> = Admit<S, JwtAdmission<C>>;
