//! The server's admission: what [`JwtAuthLayer`](crate::JwtAuthLayer) decides about each RPC,
//! on palisade-core's admission middleware ([`palisade_core::admit`]).

use std::fmt;

use palisade_core::{
    Call, Side,
    admit::{Admission, Decision},
};

use crate::{
    claims::{Claims, StandardClaims},
    config::{self, Shared},
};

/// The jwt layer's [`Admission`]: verifies the bearer token of every RPC and lets it through
/// with its claims in the request extensions (the token header removed unless it is
/// forwarded), or answers `UNAUTHENTICATED` / `PERMISSION_DENIED` itself. An RPC whose token
/// names a key not fetched yet waits for the fetch ([`Admission::Wait`], feature `remote`).
///
/// [`JwtAuthLayer`](crate::JwtAuthLayer) makes it from its builder; [`JwtAuth`](crate::JwtAuth)
/// is `Admit<S, JwtAdmission<C>>`.
pub struct JwtAdmission<C = StandardClaims>(pub(crate) Shared<C>);

impl<C> fmt::Debug for JwtAdmission<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an RPC waiting for remote keys waits on: the end of the fetch in flight (tokio's
/// [`OwnedNotified`](tokio::sync::futures::OwnedNotified), a named future holding the
/// signal's `Arc`, so the wait is never boxed).
#[cfg(feature = "remote")]
pub type KeysFetched = tokio::sync::futures::OwnedNotified;

impl<C: Claims> JwtAdmission<C> {
    /// The middleware's decision from the layer's.
    #[inline]
    fn decided(&self, decision: config::Decision<C>, call: &mut Call<'_>) -> Decision<Self> {
        let shared = &self.0;
        match decision {
            config::Decision::Pass => Decision::Pass,
            config::Decision::Allow(claims, subject) => {
                // The verified subject, for the layers outside (logging's `enduser.id`, the
                // server span's): into a record one of them made, never a new one.
                if let (Some(subject), Some(record)) = (subject, call.record()) {
                    record.set_subject(subject);
                }
                let parts = call.parts_mut();
                if !shared.forward_token {
                    parts.headers.remove(&shared.header);
                }
                parts.extensions.insert(claims);
                Decision::Pass
            }
            config::Decision::Reject(reason) => {
                shared.record(reason, call.method().as_ref());
                Decision::Reject(shared.rejections.get(reason).clone())
            }
            #[cfg(feature = "remote")]
            config::Decision::Wait(fetched) => Decision::Wait(fetched),
        }
    }
}

impl<C: Claims> Admission for JwtAdmission<C> {
    const NAME: &'static str = "jwt";
    type Observer = ();
    type Head = ();
    #[cfg(feature = "remote")]
    type Wait = KeysFetched;
    /// Without remote keys nothing is waited for.
    #[cfg(not(feature = "remote"))]
    type Wait = std::future::Pending<std::convert::Infallible>;

    fn side(&self) -> Side {
        Side::Server
    }

    #[inline]
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        let shared = &self.0;
        let parts = call.parts();
        let decision = shared.decide(&parts.headers, shared.policy_for(&parts.uri));
        self.decided(decision, call)
    }

    #[cfg(feature = "remote")]
    fn resume(&self, (): (), call: &mut Call<'_>) -> Decision<Self> {
        let shared = &self.0;
        let parts = call.parts();
        let decision = shared.decide_after_fetch(&parts.headers, shared.policy_for(&parts.uri));
        self.decided(decision, call)
    }

    #[cfg(not(feature = "remote"))]
    fn resume(&self, never: std::convert::Infallible, _: &mut Call<'_>) -> Decision<Self> {
        match never {}
    }
}
