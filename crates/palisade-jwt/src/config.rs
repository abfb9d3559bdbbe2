//! The server layer's builder and the state it shares across clones.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, header::AUTHORIZATION};
use jsonwebtoken::Algorithm;
use palisade_core::{Matcher, Method, PerMethod};

use crate::{
    admission::JwtAdmission,
    claims::{Claims, Required, StandardClaims},
    clock::Clock,
    key::{AlgSet, Key, KeyError},
    layer::JwtAuthLayer,
    policy::{Mode, Policy},
    reason::{REJECTED_METRIC, Reason, Rejections},
    verify::{Verdict, Verifier, VerifierConfig},
};

/// Why a layer (server or client) could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// No key source was configured.
    NoKeys,
    /// A key could not be loaded.
    Key(KeyError),
    /// A key file could not be read.
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A JWKS URL or issuer is not a usable URL (or is https without the `https` feature).
    Url(String),
    /// A remote key source without the `remote` feature.
    RemoteDisabled,
    /// `require_claims` named something other than `exp`, `nbf`, `iat`, `iss`, `sub`, `aud`,
    /// `jti` or `scope`.
    UnknownClaim(String),
    /// No algorithm is both allowed and verifiable by a configured key.
    NoAlgorithm,
    /// [`claims`](JwtAuthBuilder::claims) was called after a per-method policy or the default
    /// policy was set: those were written for the claims type before it.
    ClaimsAfterPolicy,
    /// The client's static token is not a valid header value (control characters,
    /// non-ASCII).
    InvalidToken,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoKeys => f.write_str("no key source configured"),
            ConfigError::Key(e) => e.fmt(f),
            ConfigError::Io { path, source } => write!(f, "reading {path}: {source}"),
            ConfigError::Url(e) => f.write_str(e),
            ConfigError::RemoteDisabled => {
                f.write_str("remote keys need palisade-jwt's `remote` feature")
            }
            ConfigError::UnknownClaim(name) => write!(
                f,
                "cannot require {name:?}: only exp, nbf, iat, iss, sub, aud, jti and scope"
            ),
            ConfigError::NoAlgorithm => {
                f.write_str("no allowed algorithm can be verified by the configured keys")
            }
            ConfigError::ClaimsAfterPolicy => f.write_str(
                "`claims::<C>()` must come before `policy` and `default_policy`: they were \
                 written for the claims type before it",
            ),
            ConfigError::InvalidToken => {
                f.write_str("the static token is not a valid header value")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Key(e) => Some(e),
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<KeyError> for ConfigError {
    fn from(e: KeyError) -> Self {
        ConfigError::Key(e)
    }
}

/// The default limit on the token header, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Builds a [`JwtAuthLayer`]: key sources, validation, cache, per-method policy and where the
/// token is read. Start with [`JwtAuthLayer::server`] (for [`StandardClaims`]), then
/// [`claims`](Self::claims) first for claims of your own.
///
/// Defaults, as Envoy's `jwt_authn` would have them where it has one: header `authorization`,
/// scheme `Bearer` (matched case-insensitively), tokens up to 8 KiB, every supported algorithm
/// allowed (each key still verifies only its own family), `exp` required, leeway 60 s, no issuer
/// or audience check, a cache of 1000 verified tokens kept at most 10 minutes (never past
/// `exp`), every method authenticated, the token header left in the request; remote keys
/// refreshed every 10 minutes, refetched on an unknown `kid` at most every 30 s, each fetch
/// limited to 5 s.
///
/// Key and URL errors are collected and returned by [`build`](JwtAuthBuilder::build).
pub struct JwtAuthBuilder<C = StandardClaims> {
    keys: Vec<Key>,
    remote: Option<RemoteSpec>,
    error: Option<ConfigError>,
    algorithms: AlgSet,
    issuers: Vec<Box<str>>,
    audiences: Vec<Box<str>>,
    required: Required,
    leeway: Duration,
    clock: Clock,
    cache_capacity: u64,
    cache_max_ttl: Duration,
    skip: Vec<Matcher>,
    rules: Vec<(Matcher, Policy<C>)>,
    default_policy: Policy<C>,
    default_policy_set: bool,
    header: HeaderName,
    scheme: Option<Box<str>>,
    max_token_bytes: usize,
    forward_token: bool,
    remote_options: RemoteOptions,
    #[cfg(feature = "remote")]
    http_client: Option<crate::remote::HttpClient>,
}

/// Timing of remote keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RemoteOptions {
    /// How long fetched keys are used before the background refresh fetches them again.
    pub(crate) refresh_interval: Duration,
    /// The least time between two fetches caused by unknown `kid`s.
    pub(crate) refetch_cooldown: Duration,
    /// The limit on one fetch (discovery and JWKS together).
    pub(crate) fetch_timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            refresh_interval: Duration::from_secs(600),
            refetch_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

impl RemoteOptions {
    /// How soon a failed fetch is retried by the background refresh.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn retry_interval(&self) -> Duration {
        self.refetch_cooldown.clamp(
            Duration::from_secs(1),
            self.refresh_interval.max(Duration::from_secs(1)),
        )
    }
}

#[derive(Debug)]
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
enum RemoteSpec {
    Jwks(String),
    Oidc(String),
}

impl<C> fmt::Debug for JwtAuthBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthBuilder")
            .field("keys", &self.keys)
            .field("remote", &self.remote)
            .field("algorithms", &self.algorithms)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl<C: Claims> JwtAuthBuilder<C> {
    /// A builder with the defaults and no key.
    pub(crate) fn new() -> Self {
        let mut required = Required::default();
        required.set(Required::EXP, true);
        JwtAuthBuilder {
            keys: Vec::new(),
            remote: None,
            error: None,
            algorithms: AlgSet::ALL,
            issuers: Vec::new(),
            audiences: Vec::new(),
            required,
            leeway: Duration::from_secs(60),
            clock: Clock::system(),
            cache_capacity: 1000,
            cache_max_ttl: Duration::from_secs(600),
            skip: Vec::new(),
            rules: Vec::new(),
            default_policy: Policy::authenticated(),
            default_policy_set: false,
            header: AUTHORIZATION,
            scheme: Some("Bearer".into()),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            forward_token: true,
            remote_options: Default::default(),
            #[cfg(feature = "remote")]
            http_client: None,
        }
    }

    /// Extracts claims of your own (`D`, with the fields your policies check) instead of
    /// [`StandardClaims`]; call it first, before [`policy`](Self::policy) and
    /// [`default_policy`](Self::default_policy) (which are written for the claims type:
    /// [`build`](Self::build) refuses them with [`ConfigError::ClaimsAfterPolicy`] otherwise).
    ///
    /// ```
    /// use palisade_jwt::{JwtAuthLayer, Policy};
    ///
    /// // Any `DeserializeOwned + Clone + Send + Sync` type is a claims type.
    /// #[derive(Clone, serde::Deserialize)]
    /// struct TenantClaims {
    ///     sub: String,
    ///     tenant: String,
    /// }
    ///
    /// let layer = JwtAuthLayer::server()
    ///     .claims::<TenantClaims>()
    ///     .secret("palisade-demo-secret")
    ///     .default_policy(Policy::authenticated().check(|claims: &TenantClaims| claims.tenant == "acme"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn claims<D: Claims>(self) -> JwtAuthBuilder<D> {
        let misplaced = !self.rules.is_empty() || self.default_policy_set;
        let error = match self.error {
            None if misplaced => Some(ConfigError::ClaimsAfterPolicy),
            error => error,
        };
        JwtAuthBuilder {
            keys: self.keys,
            remote: self.remote,
            error,
            algorithms: self.algorithms,
            issuers: self.issuers,
            audiences: self.audiences,
            required: self.required,
            leeway: self.leeway,
            clock: self.clock,
            cache_capacity: self.cache_capacity,
            cache_max_ttl: self.cache_max_ttl,
            skip: self.skip,
            rules: Vec::new(),
            default_policy: Policy::authenticated(),
            default_policy_set: false,
            header: self.header,
            scheme: self.scheme,
            max_token_bytes: self.max_token_bytes,
            forward_token: self.forward_token,
            remote_options: self.remote_options,
            #[cfg(feature = "remote")]
            http_client: self.http_client,
        }
    }

    fn fail(mut self, error: ConfigError) -> Self {
        self.error.get_or_insert(error);
        self
    }

    fn try_keys(self, keys: Result<Vec<Key>, KeyError>) -> Self {
        match keys {
            Ok(keys) => self.keys(keys),
            Err(e) => self.fail(e.into()),
        }
    }

    /// Adds an HMAC secret (HS256, HS384, HS512).
    #[must_use]
    pub fn secret(self, secret: impl AsRef<[u8]>) -> Self {
        self.key(Key::hmac(secret))
    }

    /// Adds a PEM public key (RSA, EC P-256/P-384 or Ed25519, detected).
    #[must_use]
    pub fn pem(self, pem: impl AsRef<[u8]>) -> Self {
        self.try_keys(Key::from_pem(pem).map(|k| vec![k]))
    }

    /// Adds a key.
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds keys.
    #[must_use]
    pub fn keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// Adds the keys of a JWKS document.
    #[must_use]
    pub fn jwks(self, json: impl AsRef<[u8]>) -> Self {
        self.try_keys(Key::from_jwks(json))
    }

    /// Adds the keys of a JWKS file, read now.
    #[must_use]
    pub fn jwks_file(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(json) => self.jwks(json),
            Err(source) => self.fail(ConfigError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Fetches keys from a JWKS URL (feature `remote`; `https` URLs need the feature `https`):
    /// at once when built inside a tokio runtime (else at the first request), then in the
    /// background, and again when a token names an unknown `kid`.
    #[must_use]
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.remote = Some(RemoteSpec::Jwks(url.into()));
        self
    }

    /// Finds the JWKS URL by OpenID Connect discovery (`{issuer}/.well-known/openid-configuration`)
    /// and fetches keys from it as [`jwks_url`](Self::jwks_url) does; the issuer is also added
    /// to the accepted issuers.
    #[must_use]
    pub fn oidc_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.issuers.push(issuer.as_str().into());
        self.remote = Some(RemoteSpec::Oidc(issuer));
        self
    }

    /// How often remote keys are fetched again (default 10 minutes).
    #[must_use]
    pub fn jwks_refresh_interval(mut self, interval: Duration) -> Self {
        self.remote_options.refresh_interval = interval;
        self
    }

    /// The least time between two fetches caused by unknown `kid`s (default 30 s): a flood of
    /// tokens with made-up key ids is at most one fetch per cool-down.
    #[must_use]
    pub fn jwks_refetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.remote_options.refetch_cooldown = cooldown;
        self
    }

    /// The limit on one fetch of remote keys (default 5 s).
    #[must_use]
    pub fn jwks_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.remote_options.fetch_timeout = timeout;
        self
    }

    /// The reqwest client remote keys are fetched with (feature `https`): your own roots,
    /// proxy, or timeouts.
    #[cfg(feature = "https")]
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(crate::remote::HttpClient::Reqwest(client));
        self
    }

    /// Allows only these algorithms (default: all twelve; a key still verifies only its family).
    #[must_use]
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = AlgSet::of(algorithms);
        self
    }

    /// Accepts tokens from this issuer (`iss`); once one is given, `iss` must be one of them.
    #[must_use]
    pub fn issuer(mut self, issuer: impl AsRef<str>) -> Self {
        self.issuers.push(issuer.as_ref().into());
        self
    }

    /// Accepts tokens for this audience (`aud`); once one is given, `aud` must name one of them.
    #[must_use]
    pub fn audience(mut self, audience: impl AsRef<str>) -> Self {
        self.audiences.push(audience.as_ref().into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 60 s).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Requires these registered claims to be present: `exp` (required by default), `nbf`,
    /// `iat`, `iss`, `sub`, `aud`, `jti`, `scope`. For claims of your own, make them non-optional
    /// fields of your claims type.
    #[must_use]
    pub fn require_claims<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for name in names {
            match Required::bit(name.as_ref()) {
                Some(bit) => self.required.set(bit, true),
                None => return self.fail(ConfigError::UnknownClaim(name.as_ref().to_owned())),
            }
        }
        self
    }

    /// Whether `exp` is required (default `true`). A token without `exp` is cached at most
    /// [`cache_max_ttl`](Self::cache_max_ttl).
    #[must_use]
    pub fn require_exp(mut self, required: bool) -> Self {
        self.required.set(Required::EXP, required);
        self
    }

    /// The clock `exp` and `nbf` are checked against (default [`Clock::system`]).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many verified tokens are cached (default 1000; `0` turns the cache off).
    #[must_use]
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The longest a verified token is cached (default 10 minutes; never past its `exp`).
    #[must_use]
    pub fn cache_max_ttl(mut self, ttl: Duration) -> Self {
        self.cache_max_ttl = ttl;
        self
    }

    /// Applies `policy` to the methods `matcher` selects; rules are tried in the order given.
    #[must_use]
    pub fn policy(mut self, matcher: Matcher, policy: Policy<C>) -> Self {
        self.rules.push((matcher, policy));
        self
    }

    /// Lets the methods `matcher` selects through without reading a token, before any
    /// [`policy`](Self::policy) rule (`Matcher::health_and_reflection()` for health checks and
    /// reflection; default: none skipped). Called again, the matchers add up.
    #[must_use]
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip.push(matcher);
        self
    }

    /// The policy of methods no rule selects (default [`Policy::authenticated`]).
    #[must_use]
    pub fn default_policy(mut self, policy: Policy<C>) -> Self {
        self.default_policy = policy;
        self.default_policy_set = true;
        self
    }

    /// Reads the token from this header (default `authorization`).
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The scheme before the token, matched case-insensitively (default `Bearer`); `None`: the
    /// whole header value is the token.
    #[must_use]
    pub fn scheme(mut self, scheme: Option<&str>) -> Self {
        self.scheme = scheme.map(Into::into);
        self
    }

    /// Rejects token headers longer than this, before any parsing (default 8 KiB).
    #[must_use]
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Whether the token header stays in the request passed on (default `true`); `false`
    /// removes it once verified, as Envoy's `forward: false`.
    #[must_use]
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.forward_token = forward;
        self
    }

    /// Builds the layer. Inside a tokio runtime, remote keys start loading now.
    pub fn build(self) -> Result<JwtAuthLayer<C>, ConfigError> {
        crate::ensure_crypto_provider();
        if let Some(error) = self.error {
            return Err(error);
        }
        #[cfg(feature = "remote")]
        let remote = match &self.remote {
            None => None,
            Some(spec) => {
                let source = match spec {
                    RemoteSpec::Jwks(url) => crate::remote::Source::jwks(url),
                    RemoteSpec::Oidc(issuer) => crate::remote::Source::oidc(issuer),
                }
                .map_err(ConfigError::Url)?;
                Some(crate::remote::Remote::new(
                    source,
                    self.http_client.unwrap_or_default(),
                    self.remote_options,
                ))
            }
        };
        #[cfg(not(feature = "remote"))]
        if self.remote.is_some() {
            return Err(ConfigError::RemoteDisabled);
        }
        if self.keys.is_empty() && self.remote.is_none() {
            return Err(ConfigError::NoKeys);
        }
        // Remote keys may be of any family; local keys alone limit what can verify.
        let verifiable = if self.remote.is_some() {
            AlgSet::ALL
        } else {
            AlgSet::of(self.keys.iter().flat_map(Key::algorithms))
        };
        if self.algorithms.intersect(verifiable).is_empty() {
            return Err(ConfigError::NoAlgorithm);
        }

        let verifier = Verifier::new(VerifierConfig {
            keys: self.keys,
            #[cfg(feature = "remote")]
            remote,
            algorithms: self.algorithms,
            issuers: self.issuers,
            audiences: self.audiences,
            required: self.required,
            leeway: self.leeway,
            clock: self.clock,
            cache_capacity: self.cache_capacity,
            cache_max_ttl: self.cache_max_ttl,
        });
        #[cfg(feature = "remote")]
        if let Some(remote) = &verifier.remote {
            remote.ensure_started();
        }
        let has_rules = !self.rules.is_empty() || !self.skip.is_empty();
        let mut policies = PerMethod::new();
        for matcher in self.skip {
            policies = policies.rule(matcher, Policy::public());
        }
        for (matcher, policy) in self.rules {
            policies = policies.rule(matcher, policy);
        }
        Ok(JwtAuthLayer::from_admission(JwtAdmission(Shared {
            verifier,
            policies: policies.default_value(self.default_policy),
            has_rules,
            header: self.header,
            scheme: self.scheme,
            max_token_bytes: self.max_token_bytes,
            forward_token: self.forward_token,
            rejections: Rejections::new(),
        })))
    }
}

/// The state every clone of a layer and its services shares.
pub(crate) struct Shared<C> {
    pub(crate) verifier: Verifier<C>,
    policies: PerMethod<Policy<C>>,
    /// Whether any rule was given (else the method need not be parsed).
    pub(crate) has_rules: bool,
    pub(crate) header: HeaderName,
    scheme: Option<Box<str>>,
    max_token_bytes: usize,
    pub(crate) forward_token: bool,
    pub(crate) rejections: Rejections,
}

impl<C> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("JwtAuth");
        s.field("keys", &self.verifier.keys)
            .field("algorithms", &self.verifier.algorithms)
            .field("issuers", &self.verifier.issuers)
            .field("audiences", &self.verifier.audiences)
            .field("leeway", &self.verifier.leeway)
            .field("clock", &self.verifier.clock)
            .field("policies", &self.policies)
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field("max_token_bytes", &self.max_token_bytes);
        #[cfg(feature = "remote")]
        s.field("remote", &self.verifier.remote);
        s.finish()
    }
}

/// What to do with a request.
pub(crate) enum Decision<C> {
    /// Pass it on as it is (public method, or optional token absent).
    Pass,
    /// Pass it on with these claims (and the token's subject, for the per-RPC record).
    Allow(C, Option<Arc<str>>),
    /// Answer with this rejection.
    Reject(Reason),
    /// Wait for remote keys, then decide again ([`Shared::decide_after_fetch`]) on the same
    /// request head: the token is still in it, the method names the same policy.
    #[cfg(feature = "remote")]
    Wait(tokio::sync::futures::OwnedNotified),
}

impl<C: Claims> Shared<C> {
    /// The policy for a request path.
    #[inline]
    pub(crate) fn policy(&self, method: Option<&Method<'_>>) -> &Policy<C> {
        self.policies
            .get(method)
            .expect("the policies always have a default")
    }

    /// The policy for a request: the method is parsed only when there are rules.
    #[inline]
    pub(crate) fn policy_for(&self, uri: &http::Uri) -> &Policy<C> {
        if self.has_rules {
            self.policy(Method::from_uri(uri).as_ref())
        } else {
            self.policy(None)
        }
    }

    /// Decides about a request to a method with this policy.
    #[inline]
    pub(crate) fn decide(&self, headers: &HeaderMap, policy: &Policy<C>) -> Decision<C> {
        self.decide_with(headers, policy, true)
    }

    /// Decides again about a request once the remote keys it waited for were fetched: no
    /// second wait (still no key is `unknown_key`; still no keys at all, `keys_unavailable`).
    #[cfg(feature = "remote")]
    pub(crate) fn decide_after_fetch(
        &self,
        headers: &HeaderMap,
        policy: &Policy<C>,
    ) -> Decision<C> {
        match self.decide_with(headers, policy, false) {
            Decision::Wait(_) => Decision::Reject(Reason::KeysUnavailable),
            decision => decision,
        }
    }

    #[inline]
    fn decide_with(
        &self,
        headers: &HeaderMap,
        policy: &Policy<C>,
        may_refetch: bool,
    ) -> Decision<C> {
        if policy.mode == Mode::Public {
            return Decision::Pass;
        }
        let token = match self.extract(headers) {
            Ok(token) => token,
            Err(Reason::Missing) if policy.mode == Mode::Optional => return Decision::Pass,
            Err(reason) => return Decision::Reject(reason),
        };
        let now = self.verifier.now();
        match self.verifier.verify(token, now, may_refetch) {
            Verdict::Valid(verified) => authorize(policy, &verified),
            Verdict::Invalid(reason) => Decision::Reject(reason),
            #[cfg(feature = "remote")]
            Verdict::Wait(done) => Decision::Wait(done),
        }
    }

    /// The token in the request headers, before any parsing.
    #[inline]
    fn extract<'h>(&self, headers: &'h HeaderMap) -> Result<&'h [u8], Reason> {
        let mut values = headers.get_all(&self.header).iter();
        let value = values.next().ok_or(Reason::Missing)?;
        if values.next().is_some() {
            return Err(Reason::Malformed);
        }
        let bytes = value.as_bytes();
        if bytes.len() > self.max_token_bytes {
            return Err(Reason::TooLarge);
        }
        let token = match &self.scheme {
            None => bytes,
            Some(scheme) => {
                let n = scheme.len();
                if bytes.len() < n
                    || !bytes[..n].eq_ignore_ascii_case(scheme.as_bytes())
                    || bytes.get(n).is_some_and(|b| *b != b' ')
                {
                    return Err(Reason::Missing);
                }
                bytes[n..].trim_ascii()
            }
        };
        if token.is_empty() {
            return Err(Reason::Malformed);
        }
        // Bytes that are no token (non-ASCII, …) miss the cache and fail parsing.
        Ok(token)
    }

    /// Counts and logs a rejection.
    #[cold]
    pub(crate) fn record(&self, reason: Reason, method: Option<&Method<'_>>) {
        metrics::counter!(REJECTED_METRIC, "reason" => reason.as_str()).increment(1);
        tracing::debug!(
            reason = reason.as_str(),
            grpc.service = method.map_or("", |m| m.service()),
            grpc.method = method.map_or("", |m| m.method()),
            "jwt: request rejected"
        );
    }
}

#[inline]
fn authorize<C: Claims>(policy: &Policy<C>, verified: &crate::verify::Verified<C>) -> Decision<C> {
    match policy.authorize(&verified.scope, &verified.claims) {
        Ok(()) => Decision::Allow(verified.claims.clone(), verified.subject.clone()),
        Err(reason) => Decision::Reject(reason),
    }
}
