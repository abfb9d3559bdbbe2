//! Verifying a token: the verified-token cache, then signature, time, issuer, audience and
//! required claims, then the claims type.

use std::{any::Any, borrow::Cow, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, errors::ErrorKind};
use serde::Deserialize;

use crate::{
    claims::{Claims, Registered, Required, StandardClaims},
    clock::Clock,
    key::{AlgSet, Key, KeySet, Miss, parse_alg},
    reason::Reason,
};

/// A verified token, as cached.
pub(crate) struct Verified<C> {
    pub(crate) claims: C,
    /// `exp`, seconds since the epoch.
    pub(crate) exp: Option<u64>,
    /// The `scope` claim: space-separated scopes (an array's items joined with spaces).
    pub(crate) scope: Box<str>,
    /// The `sub` claim, shared with the per-RPC record of every call this token makes (one
    /// reference count per call, no allocation).
    pub(crate) subject: Option<Arc<str>>,
    /// Until when (seconds since the epoch) the cache may answer for it without checking it
    /// again: `exp` plus leeway, at most the cache's time to live after it was verified.
    cached_until: u64,
}

/// The verdict on a token.
pub(crate) enum Verdict<C> {
    Valid(Arc<Verified<C>>),
    Invalid(Reason),
    /// Remote keys are being fetched: verify again when this resolves.
    #[cfg(feature = "remote")]
    Wait(tokio::sync::futures::OwnedNotified),
}

/// The verified-token cache: bounded, keyed by the token. Entries are checked against `exp`
/// at every hit and dropped once expired; the capacity bounds what is left.
type Cache<C> = quick_cache::sync::Cache<TokenKey, Arc<Verified<C>>>;

/// A cached token, hashed by its last bytes and compared in full.
///
/// The last bytes are the signature's: random for every valid token (the only ones stored), so
/// they spread as well as the whole token would, for a fraction of the hashing.
#[derive(PartialEq, Eq)]
struct TokenKey(Box<[u8]>);

/// A token looked up in the cache.
struct TokenRef<'a>(&'a [u8]);

const HASHED_BYTES: usize = 32;

fn hashed_part(token: &[u8]) -> &[u8] {
    &token[token.len().saturating_sub(HASHED_BYTES)..]
}

impl std::hash::Hash for TokenKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hashed_part(&self.0).hash(state);
    }
}

impl std::hash::Hash for TokenRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hashed_part(self.0).hash(state);
    }
}

impl quick_cache::Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        *self.0 == *key.0
    }
}

/// Everything a token is checked against.
pub(crate) struct Verifier<C> {
    pub(crate) keys: KeySet,
    #[cfg(feature = "remote")]
    pub(crate) remote: Option<Arc<crate::remote::Remote>>,
    pub(crate) algorithms: AlgSet,
    /// Accepted issuers; empty: any.
    pub(crate) issuers: Box<[Box<str>]>,
    /// Accepted audiences; empty: not checked.
    pub(crate) audiences: Box<[Box<str>]>,
    pub(crate) required: Required,
    pub(crate) leeway: u64,
    pub(crate) clock: Clock,
    cache: Option<Cache<C>>,
    cache_max_ttl: Duration,
}

/// The settings of a [`Verifier`].
pub(crate) struct VerifierConfig {
    pub(crate) keys: Vec<Key>,
    #[cfg(feature = "remote")]
    pub(crate) remote: Option<Arc<crate::remote::Remote>>,
    pub(crate) algorithms: AlgSet,
    pub(crate) issuers: Vec<Box<str>>,
    pub(crate) audiences: Vec<Box<str>>,
    pub(crate) required: Required,
    pub(crate) leeway: Duration,
    pub(crate) clock: Clock,
    pub(crate) cache_capacity: u64,
    pub(crate) cache_max_ttl: Duration,
}

/// The JOSE header fields that matter.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    /// RFC 7515 4.1.11: extensions the verifier must understand; we understand none.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Whether JSON text is an object (serde would also read a struct from an array).
fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

/// Decodes base64url without padding into `buf` when it fits, else into a new vector.
fn decode_b64<'b>(input: &str, buf: &'b mut [u8], spill: &'b mut Vec<u8>) -> Option<&'b [u8]> {
    if base64::decoded_len_estimate(input.len()) <= buf.len() {
        let n = URL_SAFE_NO_PAD.decode_slice(input, buf).ok()?;
        Some(&buf[..n])
    } else {
        URL_SAFE_NO_PAD.decode_vec(input, spill).ok()?;
        Some(&spill[..])
    }
}

impl<C> Verified<C> {
    /// Whether `exp` (plus leeway) has passed at `now`.
    #[inline]
    fn expired(&self, now: u64, leeway: u64) -> bool {
        self.exp.is_some_and(|exp| now > exp.saturating_add(leeway))
    }
}

impl<C: Claims> Verifier<C> {
    pub(crate) fn new(config: VerifierConfig) -> Self {
        let cache = (config.cache_capacity > 0)
            .then(|| Cache::new(usize::try_from(config.cache_capacity).unwrap_or(usize::MAX)));
        Verifier {
            keys: KeySet::new(config.keys),
            #[cfg(feature = "remote")]
            remote: config.remote,
            algorithms: config.algorithms,
            issuers: config.issuers.into(),
            audiences: config.audiences.into(),
            required: config.required,
            leeway: config.leeway.as_secs(),
            clock: config.clock,
            cache,
            cache_max_ttl: config.cache_max_ttl,
        }
    }

    /// The number of tokens in the verified-token cache.
    pub(crate) fn cached_tokens(&self) -> u64 {
        self.cache.as_ref().map_or(0, |cache| cache.len() as u64)
    }

    /// Verifies a token at `now` (seconds since the epoch). With `may_refetch`, an unknown `kid`
    /// may start a fetch of remote keys and ask the caller to wait for it.
    #[inline]
    pub(crate) fn verify(&self, token: &[u8], now: u64, may_refetch: bool) -> Verdict<C> {
        if let Some(cache) = &self.cache
            && let Some(hit) = cache.get(&TokenRef(token))
        {
            // Checked at every hit, against the layer's clock.
            if hit.expired(now, self.leeway) {
                cache.remove(&TokenRef(token));
                return Verdict::Invalid(Reason::Expired);
            }
            if now < hit.cached_until {
                return Verdict::Valid(hit);
            }
            // Cached long enough: check it again.
            cache.remove(&TokenRef(token));
        }
        let Ok(text) = std::str::from_utf8(token) else {
            return Verdict::Invalid(Reason::Malformed);
        };
        let verdict = self.verify_uncached(text, now, may_refetch);
        if let (Some(cache), Verdict::Valid(verified)) = (&self.cache, &verdict)
            && verified.cached_until > now
        {
            cache.insert(TokenKey(token.into()), verified.clone());
        }
        verdict
    }

    fn verify_uncached(&self, token: &str, now: u64, may_refetch: bool) -> Verdict<C> {
        match self.check_signature(token, may_refetch) {
            Ok(payload) => match self.check_claims(payload, now) {
                Ok(verified) => Verdict::Valid(Arc::new(verified)),
                Err(reason) => Verdict::Invalid(reason),
            },
            Err(verdict) => verdict,
        }
    }

    /// Checks the header and signature; returns the encoded payload.
    fn check_signature<'t>(
        &self,
        token: &'t str,
        may_refetch: bool,
    ) -> Result<&'t str, Verdict<C>> {
        let malformed = || Verdict::Invalid(Reason::Malformed);
        let (header_b64, rest) = token.split_once('.').ok_or_else(malformed)?;
        let (payload_b64, signature_b64) = rest.split_once('.').ok_or_else(malformed)?;
        if header_b64.is_empty()
            || payload_b64.is_empty()
            || signature_b64.is_empty()
            || signature_b64.contains('.')
        {
            return Err(malformed());
        }
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];

        let mut buf = [0u8; 256];
        let mut spill = Vec::new();
        let header_json = decode_b64(header_b64, &mut buf, &mut spill).ok_or_else(malformed)?;
        if !is_object(header_json) {
            return Err(malformed());
        }
        let header: JoseHeader<'_> =
            serde_json::from_slice(header_json).map_err(|_| malformed())?;
        if header.crit.is_some() {
            return Err(malformed());
        }
        let alg = parse_alg(&header.alg)
            .filter(|alg| self.algorithms.contains(*alg))
            .ok_or(Verdict::Invalid(Reason::Algorithm))?;
        let kid = header.kid.as_deref();

        let check = |key: &Key| verify_signature(signature_b64, message, key, alg);
        let local = match self.keys.find(kid, alg, check) {
            Ok(result) => return result.map(|()| payload_b64).map_err(Verdict::Invalid),
            Err(miss) => miss,
        };
        #[cfg(feature = "remote")]
        if let Some(remote) = &self.remote {
            remote.ensure_started();
            let keys = remote.keys();
            let remote_miss = match keys.find(kid, alg, check) {
                Ok(result) => return result.map(|()| payload_b64).map_err(Verdict::Invalid),
                Err(miss) => miss,
            };
            if remote_miss == Miss::Unknown
                && may_refetch
                && let Some(done) = remote.refetch()
            {
                return Err(Verdict::Wait(done));
            }
            if keys.is_empty() && local != Miss::Failed {
                return Err(Verdict::Invalid(Reason::KeysUnavailable));
            }
            return Err(Verdict::Invalid(miss_reason(local, remote_miss)));
        }
        let _ = may_refetch;
        Err(Verdict::Invalid(miss_reason(local, Miss::Unknown)))
    }

    /// Decodes the payload and checks time, issuer, audience and required claims.
    fn check_claims(&self, payload_b64: &str, now: u64) -> Result<Verified<C>, Reason> {
        let mut buf = [0u8; 1024];
        let mut spill = Vec::new();
        let payload = decode_b64(payload_b64, &mut buf, &mut spill).ok_or(Reason::Malformed)?;
        if !is_object(payload) {
            return Err(Reason::Malformed);
        }
        let registered: Registered<'_> =
            serde_json::from_slice(payload).map_err(|_| Reason::Malformed)?;

        if !self.required.satisfied_by(&registered) {
            return Err(Reason::MissingClaim);
        }
        if let Some(exp) = registered.exp
            && now > exp.saturating_add(self.leeway)
        {
            return Err(Reason::Expired);
        }
        if let Some(nbf) = registered.nbf
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(Reason::NotYetValid);
        }
        if !self.issuers.is_empty()
            && !registered
                .iss
                .as_deref()
                .is_some_and(|iss| self.issuers.iter().any(|ok| **ok == *iss))
        {
            return Err(Reason::Issuer);
        }
        if !self.audiences.is_empty()
            && !registered.aud.as_ref().is_some_and(|aud| {
                aud.iter()
                    .any(|a| self.audiences.iter().any(|ok| **ok == *a))
            })
        {
            return Err(Reason::Audience);
        }

        // StandardClaims are the registered claims: no second pass over the JSON.
        let mut claims: Option<C> = None;
        if let Some(standard) =
            (&mut claims as &mut dyn Any).downcast_mut::<Option<StandardClaims>>()
        {
            *standard = Some(StandardClaims::from_registered(&registered));
        } else {
            claims = Some(serde_json::from_slice(payload).map_err(|_| Reason::InvalidClaims)?);
        }
        let Some(claims) = claims else {
            return Err(Reason::InvalidClaims);
        };
        let scope = match &registered.scope {
            None => Box::default(),
            Some(crate::claims::StrOrSeq::One(scope)) => Box::from(&**scope),
            Some(many) => many.iter().collect::<Vec<_>>().join(" ").into(),
        };
        let max_until = now.saturating_add(self.cache_max_ttl.as_secs());
        let cached_until = match registered.exp {
            Some(exp) => exp
                .saturating_add(self.leeway)
                .saturating_add(1)
                .min(max_until),
            None => max_until,
        };
        Ok(Verified {
            claims,
            exp: registered.exp,
            scope,
            subject: registered.sub.as_deref().map(Arc::from),
            cached_until,
        })
    }

    /// The clock `exp` and `nbf` are checked against.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.unix_seconds()
    }
}

/// `Some(Ok)` when the key verifies the signature, `Some(Err)` when the signature is not
/// base64url, `None` to try the next key.
#[inline]
fn verify_signature(
    signature_b64: &str,
    message: &[u8],
    key: &Key,
    alg: Algorithm,
) -> Option<Result<(), Reason>> {
    if let Some(hmac) = &key.hmac {
        // HS512 is 64 bytes; room for the decoder's estimate of 86 characters.
        let mut raw = [0u8; 72];
        return match URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut raw) {
            Ok(n) => hmac.verify(alg, message, &raw[..n]).then_some(Ok(())),
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => None,
            Err(base64::DecodeSliceError::DecodeError(_)) => Some(Err(Reason::Malformed)),
        };
    }
    match jsonwebtoken::crypto::verify(signature_b64, message, &key.key, alg) {
        Ok(true) => Some(Ok(())),
        Ok(false) => None,
        Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => Some(Err(Reason::Malformed)),
        Err(_) => None,
    }
}

fn miss_reason(local: Miss, remote: Miss) -> Reason {
    match (local, remote) {
        (Miss::Failed, _) | (_, Miss::Failed) => Reason::BadSignature,
        (Miss::WrongAlgorithm, _) | (_, Miss::WrongAlgorithm) => Reason::Algorithm,
        (Miss::Unknown, Miss::Unknown) => Reason::UnknownKey,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{claims::StandardClaims, mint::HmacMinter};

    fn verifier(cache_capacity: u64) -> Verifier<StandardClaims> {
        crate::ensure_crypto_provider();
        let mut required = Required::default();
        required.set(Required::EXP, true);
        Verifier::new(VerifierConfig {
            keys: vec![Key::hmac("secret")],
            #[cfg(feature = "remote")]
            remote: None,
            algorithms: AlgSet::ALL,
            issuers: Vec::new(),
            audiences: Vec::new(),
            required,
            leeway: Duration::from_secs(60),
            clock: Clock::system(),
            cache_capacity,
            cache_max_ttl: Duration::from_secs(600),
        })
    }

    fn valid(verdict: Verdict<StandardClaims>) -> Arc<Verified<StandardClaims>> {
        match verdict {
            Verdict::Valid(verified) => verified,
            _ => panic!("not valid"),
        }
    }

    #[test]
    fn a_cache_hit_skips_the_signature_check() {
        let token = HmacMinter::hs256("secret").subject("a").mint().unwrap();
        let mut cached = verifier(10);
        let mut uncached = verifier(0);
        let now = cached.now();
        valid(cached.verify(token.value().as_bytes(), now, false));
        valid(uncached.verify(token.value().as_bytes(), now, false));
        // Without the key, only the cache can still say yes.
        cached.keys = KeySet::default();
        uncached.keys = KeySet::default();
        assert_eq!(
            valid(cached.verify(token.value().as_bytes(), now, false))
                .claims
                .subject(),
            Some("a")
        );
        assert!(matches!(
            uncached.verify(token.value().as_bytes(), now, false),
            Verdict::Invalid(Reason::UnknownKey)
        ));
    }

    #[test]
    fn entries_live_until_exp_plus_leeway_at_most() {
        let v = verifier(10);
        let now = v.now();
        let short = HmacMinter::hs256("secret")
            .ttl(Duration::from_secs(30))
            .mint()
            .unwrap();
        let ttl = valid(v.verify(short.value().as_bytes(), now, false)).cached_until - now;
        assert!((89..=92).contains(&ttl), "{ttl}");
        let long = HmacMinter::hs256("secret")
            .ttl(Duration::from_secs(86_400))
            .mint()
            .unwrap();
        assert_eq!(
            valid(v.verify(long.value().as_bytes(), now, false)).cached_until,
            now + 600
        );
        // Past its time in the cache, a token is verified again (and cached again).
        let mut v = v;
        v.keys = KeySet::default();
        assert!(matches!(
            v.verify(long.value().as_bytes(), now + 599, false),
            Verdict::Valid(_)
        ));
        assert!(matches!(
            v.verify(long.value().as_bytes(), now + 600, false),
            Verdict::Invalid(Reason::UnknownKey)
        ));
        // At exp + leeway + 1, the cached entry is refused.
        let exp = valid(v.verify(short.value().as_bytes(), now, false))
            .exp
            .unwrap();
        valid(v.verify(short.value().as_bytes(), exp + 60, false));
        assert!(matches!(
            v.verify(short.value().as_bytes(), exp + 61, false),
            Verdict::Invalid(Reason::Expired)
        ));
    }
}
