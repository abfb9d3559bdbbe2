//! Verification keys, each bound to its algorithms.

use std::{fmt, sync::Arc};

use crate::hmac::PreparedHmac;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse},
};

/// A set of algorithms, as a bitmask.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AlgSet(u16);

/// Every algorithm Palisade verifies, in the order of [`AlgSet`]'s bits.
pub(crate) const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl AlgSet {
    pub(crate) const ALL: AlgSet = AlgSet((1 << 12) - 1);
    const HMAC: AlgSet = AlgSet(0b111);
    const RSA: AlgSet = AlgSet(0b111_111 << 3);

    pub(crate) fn bit(alg: Algorithm) -> Option<u16> {
        ALL_ALGORITHMS
            .iter()
            .position(|a| *a == alg)
            .map(|i| 1 << i)
    }

    pub(crate) fn one(alg: Algorithm) -> AlgSet {
        AlgSet(Self::bit(alg).unwrap_or(0))
    }

    pub(crate) fn of(algs: impl IntoIterator<Item = Algorithm>) -> AlgSet {
        AlgSet(algs.into_iter().filter_map(Self::bit).fold(0, |a, b| a | b))
    }

    pub(crate) fn contains(self, alg: Algorithm) -> bool {
        Self::bit(alg).is_some_and(|bit| self.0 & bit != 0)
    }

    pub(crate) fn intersect(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL_ALGORITHMS
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, a)| a)
    }
}

impl fmt::Debug for AlgSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Parses the `alg` of a JOSE header; `None` for `none` and anything unsupported.
pub(crate) fn parse_alg(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Why a key could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM or JWK could not be read as a public key of a supported type.
    Invalid(String),
    /// The key type, curve or algorithm is not supported (ES512, P-521, Ed448, encryption keys…).
    Unsupported(String),
    /// An algorithm was asked of a key of another family (an RSA key for HS256, …).
    AlgorithmMismatch {
        /// The algorithm asked for.
        algorithm: Algorithm,
    },
    /// A JWKS held no key usable for verifying signatures.
    NoUsableKey,
    /// A JWKS document was not valid JSON of the JWKS shape.
    InvalidJwks(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Invalid(why) => write!(f, "invalid key: {why}"),
            KeyError::Unsupported(what) => write!(f, "unsupported key: {what}"),
            KeyError::AlgorithmMismatch { algorithm } => {
                write!(f, "the key cannot verify {algorithm:?}")
            }
            KeyError::NoUsableKey => f.write_str("the JWKS holds no usable signature key"),
            KeyError::InvalidJwks(why) => write!(f, "invalid JWKS: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A verification key: an HMAC secret or a public key, with an optional key id (`kid`), bound to
/// the algorithms of its family — an HMAC secret verifies only HS256/384/512, an RSA key only
/// RS/PS, a P-256 key only ES256, a P-384 key only ES384, an Ed25519 key only EdDSA — so a token
/// cannot choose how its signature is checked (no `none`, no HS256-with-an-RSA-public-key).
///
/// # Example
///
/// ```
/// use palisade_jwt::{Algorithm, Key};
///
/// let secret = Key::hmac("a long random secret").with_kid("v1");
/// assert_eq!(secret.kid(), Some("v1"));
/// assert!(secret.algorithms().eq([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]));
///
/// let hs256_only = Key::hmac("s").with_algorithm(Algorithm::HS256).unwrap();
/// assert!(hs256_only.algorithms().eq([Algorithm::HS256]));
/// assert!(Key::hmac("s").with_algorithm(Algorithm::RS256).is_err());
/// ```
#[derive(Clone)]
pub struct Key {
    pub(crate) kid: Option<Arc<str>>,
    pub(crate) algs: AlgSet,
    pub(crate) key: DecodingKey,
    /// HMAC secrets, prepared once.
    pub(crate) hmac: Option<PreparedHmac>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algs)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn new(algs: AlgSet, key: DecodingKey) -> Key {
        let hmac = match (key.family(), key.try_get_as_bytes()) {
            (AlgorithmFamily::Hmac, Ok(secret)) => PreparedHmac::new(secret),
            _ => None,
        };
        Key {
            kid: None,
            algs,
            key,
            hmac,
        }
    }

    /// An HMAC secret (HS256, HS384, HS512).
    pub fn hmac(secret: impl AsRef<[u8]>) -> Key {
        Key::new(AlgSet::HMAC, DecodingKey::from_secret(secret.as_ref()))
    }

    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`, or a certificate): RSA (RS/PS), EC
    /// P-256 (ES256) or P-384 (ES384), or Ed25519 (EdDSA), detected from the PEM.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Key, KeyError> {
        let pem = pem.as_ref();
        Key::rsa_pem(pem)
            .or_else(|_| Key::ec_pem(pem))
            .or_else(|_| Key::ed_pem(pem))
            .map_err(|_| KeyError::Invalid("not an RSA, EC or Ed25519 public key in PEM".into()))
    }

    /// An RSA public key in PEM (RS256/384/512, PS256/384/512).
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Key, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem.as_ref()).map_err(invalid)?;
        Ok(Key::new(AlgSet::RSA, key))
    }

    /// An EC public key in PEM: P-256 (ES256) or P-384 (ES384).
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Key, KeyError> {
        let key = DecodingKey::from_ec_pem(pem.as_ref()).map_err(invalid)?;
        // The uncompressed point: 0x04, then x and y of 32 (P-256) or 48 (P-384) bytes each.
        let alg = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => {
                return Err(KeyError::Unsupported(
                    "EC curve other than P-256 or P-384".into(),
                ));
            }
        };
        Ok(Key::new(AlgSet::one(alg), key))
    }

    /// An Ed25519 public key in PEM (EdDSA).
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Key, KeyError> {
        let key = DecodingKey::from_ed_pem(pem.as_ref()).map_err(invalid)?;
        Ok(Key::new(AlgSet::one(Algorithm::EdDSA), key))
    }

    /// A key from a JWK: its `kid`, and its algorithm from `alg` when given, else from the key
    /// type and curve. Keys for encryption (`use: enc`, or `key_ops` without `verify`) are
    /// refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Key, KeyError> {
        let common = &jwk.common;
        if let Some(usage) = &common.public_key_use
            && *usage != PublicKeyUse::Signature
        {
            return Err(KeyError::Unsupported("a key not for signatures".into()));
        }
        if let Some(ops) = &common.key_operations
            && !ops.contains(&KeyOperations::Verify)
        {
            return Err(KeyError::Unsupported(
                "a key without the verify operation".into(),
            ));
        }
        let algs = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgSet::RSA,
            AlgorithmParameters::OctetKey(_) => AlgSet::HMAC,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => AlgSet::one(Algorithm::ES256),
                EllipticCurve::P384 => AlgSet::one(Algorithm::ES384),
                _ => return Err(KeyError::Unsupported("EC curve".into())),
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => AlgSet::one(Algorithm::EdDSA),
                _ => return Err(KeyError::Unsupported("OKP curve".into())),
            },
            _ => return Err(KeyError::Unsupported("key type".into())),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(invalid)?;
        let mut key = Key::new(algs, key);
        key.kid = common.key_id.as_deref().map(Arc::from);
        if let Some(alg) = common.key_algorithm {
            let alg = Algorithm::try_from(alg)
                .map_err(|_| KeyError::Unsupported(format!("algorithm {alg}")))?;
            key = key.with_algorithm(alg)?;
        }
        Ok(key)
    }

    /// The usable signature keys of a JWKS document (`{"keys": [...]}`). Keys that cannot be
    /// used (encryption keys, unsupported types or curves, malformed entries) are skipped; a set
    /// with no usable key is an error.
    pub fn from_jwks(json: impl AsRef<[u8]>) -> Result<Vec<Key>, KeyError> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(json.as_ref())
            .map_err(|e| KeyError::InvalidJwks(e.to_string()))?;
        let keys: Vec<Key> = set
            .keys
            .into_iter()
            .filter_map(|value| {
                let jwk: Jwk = serde_json::from_value(value)
                    .inspect_err(|e| tracing::debug!(error = %e, "skipping an unreadable JWK"))
                    .ok()?;
                Key::from_jwk(&jwk)
                    .inspect_err(
                        |e| tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping a JWK"),
                    )
                    .ok()
            })
            .collect();
        if keys.is_empty() {
            return Err(KeyError::NoUsableKey);
        }
        Ok(keys)
    }

    /// Sets the key id; a token naming a `kid` is only checked against keys with that id (or
    /// with none).
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<Arc<str>>) -> Key {
        self.kid = Some(kid.into());
        self
    }

    /// Narrows the key to one algorithm of its family.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Result<Key, KeyError> {
        if !self.algs.contains(algorithm) {
            return Err(KeyError::AlgorithmMismatch { algorithm });
        }
        self.algs = AlgSet::one(algorithm);
        Ok(self)
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + use<> {
        self.algs.iter()
    }

    /// The key's family.
    pub fn family(&self) -> AlgorithmFamily {
        self.key.family()
    }

    /// Whether this key may check a token naming `kid` and `alg`. Keys without an id are tried
    /// for every token, as Envoy does.
    #[inline]
    pub(crate) fn accepts_kid(&self, kid: Option<&str>) -> bool {
        match (&self.kid, kid) {
            (Some(mine), Some(theirs)) => **mine == *theirs,
            _ => true,
        }
    }
}

fn invalid(e: jsonwebtoken::errors::Error) -> KeyError {
    KeyError::Invalid(e.to_string())
}

/// The keys of one source.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// What a key set holds for a token's `kid` and `alg`.
#[cfg(test)]
pub(crate) enum Lookup<'a> {
    /// Keys to try, in order.
    Found(Vec<&'a Key>),
    /// Keys with this `kid` exist, but none for this algorithm.
    WrongAlgorithm,
    /// No key with this `kid`.
    Unknown,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<Key>) -> KeySet {
        KeySet { keys }
    }

    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Calls `f` on each key for this `kid` and `alg`, until it returns `Some`.
    pub(crate) fn find<'s, T>(
        &'s self,
        kid: Option<&str>,
        alg: Algorithm,
        mut f: impl FnMut(&'s Key) -> Option<T>,
    ) -> Result<T, Miss> {
        let mut by_kid = false;
        let mut tried = false;
        for key in &self.keys {
            if !key.accepts_kid(kid) {
                continue;
            }
            by_kid = true;
            if !key.algs.contains(alg) {
                continue;
            }
            tried = true;
            if let Some(found) = f(key) {
                return Ok(found);
            }
        }
        Err(match (tried, by_kid) {
            (true, _) => Miss::Failed,
            (false, true) => Miss::WrongAlgorithm,
            (false, false) => Miss::Unknown,
        })
    }

    /// What the set holds for a `kid` and `alg`.
    #[cfg(test)]
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let mut found = Vec::new();
        let miss = self.find(kid, alg, |key| {
            found.push(key);
            None::<()>
        });
        match miss {
            Err(Miss::Failed) => Lookup::Found(found),
            Err(Miss::WrongAlgorithm) => Lookup::WrongAlgorithm,
            _ => Lookup::Unknown,
        }
    }
}

/// Why no key of a set verified a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Keys were tried and none verified the signature.
    Failed,
    /// Keys with this `kid` exist, but none for this algorithm.
    WrongAlgorithm,
    /// No key with this `kid`.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../tests/keys/rsa.pub.pem");
    const EC256: &str = include_str!("../tests/keys/ec256.pub.pem");
    const EC384: &str = include_str!("../tests/keys/ec384.pub.pem");
    const ED: &str = include_str!("../tests/keys/ed25519.pub.pem");

    #[test]
    fn pem_keys_are_bound_to_their_family() {
        let rsa = Key::from_pem(RSA).unwrap();
        assert_eq!(rsa.family(), AlgorithmFamily::Rsa);
        assert!(rsa.algorithms().all(|a| a.family() == AlgorithmFamily::Rsa));
        assert_eq!(rsa.algorithms().count(), 6);
        assert!(
            Key::from_pem(EC256)
                .unwrap()
                .algorithms()
                .eq([Algorithm::ES256])
        );
        assert!(
            Key::from_pem(EC384)
                .unwrap()
                .algorithms()
                .eq([Algorithm::ES384])
        );
        assert!(
            Key::from_pem(ED)
                .unwrap()
                .algorithms()
                .eq([Algorithm::EdDSA])
        );
        assert!(Key::from_pem("not a pem").is_err());
        assert!(Key::rsa_pem(EC256).is_err());
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let jwks = r#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hs","alg":"HS256"},
            {"kty":"oct","k":"c2VjcmV0","kid":"enc","use":"enc"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"p521"},
            {"kty":"oct","k":"c2VjcmV0","kid":"bad-alg","alg":"RS256"},
            {"kty":"weird"},
            42
        ]}"#;
        let keys = Key::from_jwks(jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid(), Some("hs"));
        assert!(keys[0].algorithms().eq([Algorithm::HS256]));
        assert!(matches!(
            Key::from_jwks(r#"{"keys":[]}"#),
            Err(KeyError::NoUsableKey)
        ));
        assert!(matches!(
            Key::from_jwks("[]"),
            Err(KeyError::InvalidJwks(_))
        ));
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let set = KeySet::new(vec![
            Key::hmac("a").with_kid("a"),
            Key::from_pem(RSA).unwrap().with_kid("r"),
            Key::hmac("any"),
        ]);
        assert!(
            matches!(set.lookup(Some("a"), Algorithm::HS256), Lookup::Found(k) if k.len() == 2)
        );
        assert!(
            matches!(set.lookup(Some("r"), Algorithm::RS256), Lookup::Found(k) if k.len() == 1)
        );
        // The kid-less HMAC key is tried for any kid, but not for RS256.
        assert!(
            matches!(set.lookup(Some("zz"), Algorithm::HS256), Lookup::Found(k) if k.len() == 1)
        );
        assert!(matches!(
            set.lookup(Some("zz"), Algorithm::RS256),
            Lookup::WrongAlgorithm
        ));
        let rsa_only = KeySet::new(vec![Key::from_pem(RSA).unwrap().with_kid("r")]);
        assert!(matches!(
            rsa_only.lookup(Some("r"), Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            rsa_only.lookup(Some("x"), Algorithm::RS256),
            Lookup::Unknown
        ));
        assert!(matches!(
            rsa_only.lookup(None, Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
    }

    #[test]
    fn alg_names() {
        for alg in ALL_ALGORITHMS {
            assert_eq!(parse_alg(&format!("{alg:?}")), Some(alg));
        }
        for bad in ["none", "None", "NONE", "hs256", "ES512", ""] {
            assert_eq!(parse_alg(bad), None);
        }
        assert_eq!(AlgSet::ALL.iter().count(), 12);
    }
}
