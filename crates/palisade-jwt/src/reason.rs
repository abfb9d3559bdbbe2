//! Why a request was rejected: the metric label, the gRPC code and the client's message.

use std::fmt;

use palisade_core::{Code, Rejection};

/// The metric every server rejection is counted in, labelled `reason`.
pub const REJECTED_METRIC: &str = "palisade_auth_rejected_total";

/// Why the server layer rejected a request. [`Reason::as_str`] is the `reason` label of
/// `palisade_auth_rejected_total` and of the debug log; the client only sees a short message
/// that names no key, no claim value and no library error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No token: no header, or a header with another scheme. `UNAUTHENTICATED`.
    Missing,
    /// Over the size limit, rejected before parsing. `UNAUTHENTICATED`.
    TooLarge,
    /// Not a compact JWS: empty, not three base64url parts, bad JSON, non-ASCII metadata, several
    /// headers, unknown critical header. `UNAUTHENTICATED`.
    Malformed,
    /// `alg` is `none`, not allowed, or not the algorithm of the token's key. `UNAUTHENTICATED`.
    Algorithm,
    /// No key with the token's `kid`, even after a refetch. `UNAUTHENTICATED`.
    UnknownKey,
    /// Remote keys never loaded. `UNAUTHENTICATED`.
    KeysUnavailable,
    /// The signature does not verify. `UNAUTHENTICATED`.
    BadSignature,
    /// `exp` passed, beyond the leeway. `UNAUTHENTICATED`.
    Expired,
    /// `nbf` not reached, beyond the leeway. `UNAUTHENTICATED`.
    NotYetValid,
    /// `iss` missing or not an accepted issuer. `UNAUTHENTICATED`.
    Issuer,
    /// `aud` missing or naming no accepted audience. `UNAUTHENTICATED`.
    Audience,
    /// A required claim (`exp` by default) is missing. `UNAUTHENTICATED`.
    MissingClaim,
    /// The claims do not deserialize into the claims type. `UNAUTHENTICATED`.
    InvalidClaims,
    /// A valid token without a scope the method requires. `PERMISSION_DENIED`.
    InsufficientScope,
    /// A valid token failing the method's claims check. `PERMISSION_DENIED`.
    ClaimsCheck,
}

impl Reason {
    pub(crate) const ALL: [Reason; 15] = [
        Reason::Missing,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Algorithm,
        Reason::UnknownKey,
        Reason::KeysUnavailable,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Issuer,
        Reason::Audience,
        Reason::MissingClaim,
        Reason::InvalidClaims,
        Reason::InsufficientScope,
        Reason::ClaimsCheck,
    ];

    /// The `reason` label: `missing`, `too_large`, `malformed`, `algorithm`, `unknown_key`,
    /// `keys_unavailable`, `bad_signature`, `expired`, `not_yet_valid`, `issuer`, `audience`,
    /// `missing_claim`, `invalid_claims`, `insufficient_scope`, `claims_check`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::UnknownKey => "unknown_key",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::MissingClaim => "missing_claim",
            Reason::InvalidClaims => "invalid_claims",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClaimsCheck => "claims_check",
        }
    }

    /// `PERMISSION_DENIED` for a valid token that may not call the method, `UNAUTHENTICATED`
    /// for everything else.
    pub const fn code(self) -> Code {
        match self {
            Reason::InsufficientScope | Reason::ClaimsCheck => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        }
    }

    /// The `grpc-message` the client sees.
    pub const fn message(self) -> &'static str {
        match self {
            Reason::Missing => "missing token",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid",
            Reason::KeysUnavailable => "token cannot be verified",
            Reason::InsufficientScope => "insufficient scope",
            Reason::ClaimsCheck => "permission denied",
            _ => "invalid token",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rejections, built once (their messages encoded once).
#[derive(Clone, Debug)]
pub(crate) struct Rejections(Box<[Rejection]>);

impl Rejections {
    pub(crate) fn new() -> Self {
        Rejections(
            Reason::ALL
                .iter()
                .map(|r| Rejection::new(r.code(), r.message()).by("jwt"))
                .collect(),
        )
    }

    pub(crate) fn get(&self, reason: Reason) -> &Rejection {
        &self.0[reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let rejections = Rejections::new();
        assert_eq!(
            rejections.get(Reason::ClaimsCheck).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            rejections.get(Reason::Missing).code(),
            Code::Unauthenticated
        );
    }
}
