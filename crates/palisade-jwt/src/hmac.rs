//! HMAC keys prepared once, verified with the same backend jsonwebtoken uses.
//!
//! `jsonwebtoken::crypto::verify` sets an HMAC key up (two SHA-2 blocks, allocations, a boxed
//! verifier) at every call: two thirds of an HS256 check. HMAC keys are prepared here once per
//! key; the other algorithms, whose cost is the public-key arithmetic, go through jsonwebtoken.

use jsonwebtoken::Algorithm;

/// An HMAC secret prepared for HS256, HS384 and HS512.
#[derive(Clone)]
pub(crate) struct PreparedHmac(Inner);

#[cfg(feature = "aws-lc-rs")]
type Inner = std::sync::Arc<[aws_lc_rs::hmac::Key; 3]>;

#[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
type Inner = std::sync::Arc<(
    hmac::Hmac<sha2::Sha256>,
    hmac::Hmac<sha2::Sha384>,
    hmac::Hmac<sha2::Sha512>,
)>;

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
type Inner = std::convert::Infallible;

impl PreparedHmac {
    /// Prepares a secret; `None` without a built-in backend (a custom jsonwebtoken provider).
    #[allow(unreachable_code, unused_variables)]
    pub(crate) fn new(secret: &[u8]) -> Option<Self> {
        #[cfg(feature = "aws-lc-rs")]
        {
            use aws_lc_rs::hmac::{HMAC_SHA256, HMAC_SHA384, HMAC_SHA512, Key};
            return Some(PreparedHmac(std::sync::Arc::new([
                Key::new(HMAC_SHA256, secret),
                Key::new(HMAC_SHA384, secret),
                Key::new(HMAC_SHA512, secret),
            ])));
        }
        #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
        {
            use hmac::Mac;
            return Some(PreparedHmac(std::sync::Arc::new((
                hmac::Hmac::new_from_slice(secret).ok()?,
                hmac::Hmac::new_from_slice(secret).ok()?,
                hmac::Hmac::new_from_slice(secret).ok()?,
            ))));
        }
        None
    }

    /// Whether `signature` is the HMAC of `message` (compared in constant time).
    #[inline]
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "aws-lc-rs")]
        {
            let key = match alg {
                Algorithm::HS256 => &self.0[0],
                Algorithm::HS384 => &self.0[1],
                Algorithm::HS512 => &self.0[2],
                _ => return false,
            };
            aws_lc_rs::hmac::verify(key, message, signature).is_ok()
        }
        #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
        {
            use hmac::Mac;
            fn check<M: Mac + Clone>(mac: &M, message: &[u8], signature: &[u8]) -> bool {
                let mut mac = mac.clone();
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            match alg {
                Algorithm::HS256 => check(&self.0.0, message, signature),
                Algorithm::HS384 => check(&self.0.1, message, signature),
                Algorithm::HS512 => check(&self.0.2, message, signature),
                _ => false,
            }
        }
        #[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
        {
            let _ = (alg, message, signature);
            match self.0 {}
        }
    }
}

#[cfg(all(test, any(feature = "aws-lc-rs", feature = "rust-crypto")))]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_jsonwebtoken() {
        crate::ensure_crypto_provider();
        let prepared = PreparedHmac::new(b"secret").unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let signature = jsonwebtoken::crypto::sign(b"message", &key, alg).unwrap();
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            assert!(prepared.verify(alg, b"message", &raw), "{alg:?}");
            assert!(!prepared.verify(alg, b"messagf", &raw), "{alg:?}");
            assert!(!prepared.verify(alg, b"message", &raw[1..]), "{alg:?}");
        }
        assert!(!prepared.verify(Algorithm::RS256, b"message", &[0; 32]));
    }
}
