//! Per-method policy: public, optional or required token; required scopes; a claims check.

use std::{fmt, sync::Arc};

use crate::{claims::StandardClaims, reason::Reason};

/// What a method asks of the caller, chosen per method with a
/// [`Matcher`](palisade_core::Matcher) (see [`JwtAuthBuilder::policy`](crate::JwtAuthBuilder::policy)).
///
/// - [`Policy::public`]: no token needed, none read (health checks, reflection);
/// - [`Policy::optional`]: a token is verified when present and the request rejected if it is
///   invalid; a request without one (no header, or another scheme) passes, without claims
///   (Envoy's `allow_missing`);
/// - [`Policy::authenticated`] (the default): a valid token is required.
///
/// Required scopes ([`Policy::scopes`]) and a claims check ([`Policy::check`]) answer
/// `PERMISSION_DENIED` when a valid token does not satisfy them.
///
/// # Example
///
/// ```
/// use palisade_jwt::{Policy, StandardClaims};
///
/// let streaming: Policy = Policy::authenticated().scopes(["greeter.stream"]);
/// let admins: Policy = Policy::authenticated()
///     .check(|claims: &StandardClaims| claims.subject().is_some_and(|s| s.starts_with("admin-")));
/// # let _ = (streaming, admins);
/// ```
pub struct Policy<C = StandardClaims> {
    pub(crate) mode: Mode,
    scopes: Arc<[Box<str>]>,
    check: Option<Check<C>>,
}

type Check<C> = Arc<dyn Fn(&C) -> bool + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Public,
    Optional,
    Required,
}

impl<C> Policy<C> {
    /// No token needed, none read.
    pub fn public() -> Self {
        Self::with_mode(Mode::Public)
    }

    /// A token is verified when present (an invalid one is rejected); none is fine.
    pub fn optional() -> Self {
        Self::with_mode(Mode::Optional)
    }

    /// A valid token is required (the default policy).
    pub fn authenticated() -> Self {
        Self::with_mode(Mode::Required)
    }

    fn with_mode(mode: Mode) -> Self {
        Policy {
            mode,
            scopes: Arc::new([]),
            check: None,
        }
    }

    /// Requires every one of these scopes in the token's `scope` claim.
    #[must_use]
    pub fn scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut all: Vec<Box<str>> = self.scopes.iter().cloned().collect();
        all.extend(scopes.into_iter().map(|s| s.as_ref().into()));
        self.scopes = all.into();
        self
    }

    /// Requires `check` to accept the token's claims.
    #[must_use]
    pub fn check(mut self, check: impl Fn(&C) -> bool + Send + Sync + 'static) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    /// The scopes this policy requires.
    pub fn required_scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    /// Whether a verified token with these scopes and claims may call the method.
    #[inline]
    pub(crate) fn authorize(&self, token_scope: &str, claims: &C) -> Result<(), Reason> {
        if !self.scopes.iter().all(|required| {
            token_scope
                .split_ascii_whitespace()
                .any(|s| s == &**required)
        }) {
            return Err(Reason::InsufficientScope);
        }
        if let Some(check) = &self.check
            && !check(claims)
        {
            return Err(Reason::ClaimsCheck);
        }
        Ok(())
    }
}

impl<C> Default for Policy<C> {
    fn default() -> Self {
        Self::authenticated()
    }
}

impl<C> Clone for Policy<C> {
    fn clone(&self) -> Self {
        Policy {
            mode: self.mode,
            scopes: self.scopes.clone(),
            check: self.check.clone(),
        }
    }
}

impl<C> fmt::Debug for Policy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("mode", &self.mode)
            .field("scopes", &self.scopes)
            .field("check", &self.check.as_ref().map(|_| ".."))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_checks() {
        let policy: Policy<u32> = Policy::authenticated()
            .scopes(["a"])
            .scopes(["b"])
            .check(|n| *n > 1);
        assert!(policy.required_scopes().eq(["a", "b"]));
        assert_eq!(policy.authorize("b x  a", &2), Ok(()));
        assert_eq!(policy.authorize("b x a", &1), Err(Reason::ClaimsCheck));
        assert_eq!(policy.authorize("b x", &2), Err(Reason::InsufficientScope));
        assert_eq!(policy.authorize("b ab", &2), Err(Reason::InsufficientScope));
        assert_eq!(Policy::<u32>::public().mode, Mode::Public);
    }
}
