//! Minting short-lived HMAC tokens: for clients that share a secret with the server, tests and
//! demos.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::client::{BoxError, Token, TokenSource};

/// The latest `exp` minted: 9999-12-31T23:59:59Z, the last second most date libraries can
/// represent.
const MAX_EXP: u64 = 253_402_300_799;

/// Mints HMAC-signed JWTs: `iat` now, `exp` after the time to live, plus the claims set here.
/// As a [`TokenSource`], it mints a new token each time the client layer refreshes.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_jwt::mint::HmacMinter;
///
/// let minter = HmacMinter::hs256("palisade-demo-secret")
///     .subject("demo-client")
///     .scope("greeter.stream")
///     .ttl(Duration::from_secs(300));
/// let token = minter.mint().unwrap();
/// assert_eq!(token.value().split('.').count(), 3);
/// ```
#[derive(Clone)]
pub struct HmacMinter {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
    ttl: Duration,
}

impl fmt::Debug for HmacMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacMinter")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("claims", &self.claims)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl HmacMinter {
    /// An HS256 minter; tokens live 5 minutes unless [`ttl`](Self::ttl) says otherwise.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        crate::ensure_crypto_provider();
        HmacMinter {
            key: EncodingKey::from_secret(secret.as_ref()),
            algorithm: Algorithm::HS256,
            kid: None,
            claims: Map::new(),
            ttl: Duration::from_secs(300),
        }
    }

    /// Signs with HS384 or HS512 instead (other algorithms are ignored).
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        if matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            self.algorithm = algorithm;
        }
        self
    }

    /// Names the key in the header (`kid`).
    #[must_use]
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Sets `sub`.
    #[must_use]
    pub fn subject(self, sub: impl Into<String>) -> Self {
        self.claim("sub", sub.into())
    }

    /// Sets `iss`.
    #[must_use]
    pub fn issuer(self, iss: impl Into<String>) -> Self {
        self.claim("iss", iss.into())
    }

    /// Sets `aud`.
    #[must_use]
    pub fn audience(self, aud: impl Into<String>) -> Self {
        self.claim("aud", aud.into())
    }

    /// Sets `scope` (space-separated scopes).
    #[must_use]
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.claim("scope", scope.into())
    }

    /// Sets any claim (`iat` and `exp` are set at minting).
    #[must_use]
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// How long minted tokens live (default 5 minutes). However long (up to `Duration::MAX`),
    /// `exp` is at most 9999-12-31T23:59:59Z, the last second most date libraries can
    /// represent (or `iat`, when minted later than that).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Mints a token now.
    pub fn mint(&self) -> Result<Token, BoxError> {
        self.mint_at(SystemTime::now())
    }

    /// Mints a token as if it were `now`: `iat` is `now`, `exp` is `now` plus the time to
    /// live — in the past for a demo of an expired token.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use palisade_jwt::mint::HmacMinter;
    ///
    /// let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    /// let expired = HmacMinter::hs256("s").mint_at(an_hour_ago).unwrap();
    /// # let _ = expired;
    /// ```
    pub fn mint_at(&self, now: SystemTime) -> Result<Token, BoxError> {
        let now = now.duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = self.claims.clone();
        claims.insert("iat".into(), now.into());
        let exp = now.saturating_add(self.ttl.as_secs()).min(MAX_EXP).max(now);
        claims.insert("exp".into(), exp.into());
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok(Token::jwt(token))
    }
}

impl TokenSource for HmacMinter {
    async fn token(&self) -> Result<Token, BoxError> {
        self.mint()
    }
}
