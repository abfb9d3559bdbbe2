//! JWT authentication for gRPC servers, token attachment for gRPC clients, as tower layers.
//!
//! - [`JwtAuthLayer`] (server) reads the bearer token from `authorization` metadata, verifies
//!   it with [`jsonwebtoken`] against keys from a secret, PEM public keys, a JWKS document or
//!   file, a JWKS URL or OpenID Connect discovery, checks `exp`/`nbf` (with leeway), issuer,
//!   audience and required claims, and puts the claims — [`StandardClaims`] or a type of your
//!   own — into the request extensions. Per method ([`Policy`] with a
//!   [`Matcher`](palisade_core::Matcher)): public, optional, or required with scopes and a
//!   claims check. It answers `UNAUTHENTICATED` (no token, malformed, bad signature, expired,
//!   wrong issuer or audience, unknown key) or `PERMISSION_DENIED` (missing scope, failed
//!   check) as a trailers-only gRPC response, counts the [`Reason`] in
//!   `palisade_auth_rejected_total{reason}` and logs it at debug level.
//! - [`AttachTokenLayer`](client::AttachTokenLayer) (client) attaches `authorization: Bearer …`
//!   from a static token or a [`TokenSource`](client::TokenSource), refreshing it before it
//!   expires with one refresh in flight, backing off after failures.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use palisade_core::Matcher;
//! use palisade_jwt::{JwtAuthLayer, Policy, StandardClaims, mint::HmacMinter};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let auth = JwtAuthLayer::server()
//!     .secret("palisade-demo-secret")
//!     .skip(Matcher::health_and_reflection())
//!     .policy(
//!         Matcher::method("palisade.demo.v1.Greeter/SayHelloStream"),
//!         Policy::authenticated().scopes(["greeter.stream"]),
//!     )
//!     .build()
//!     .unwrap();
//!
//! // The handler reads the verified claims from the request extensions.
//! let service = auth.layer(service_fn(|request: Request<String>| async move {
//!     let claims = request.extensions().get::<StandardClaims>().unwrap();
//!     Ok::<_, Infallible>(Response::new(format!("hello {}", claims.subject().unwrap())))
//! }));
//!
//! let token = HmacMinter::hs256("palisade-demo-secret").subject("demo-client").mint().unwrap();
//! let request = Request::post("/palisade.demo.v1.Greeter/SayHello")
//!     .header("authorization", format!("Bearer {}", token.value()))
//!     .body(String::new())
//!     .unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.into_body().get_ref(), "hello demo-client");
//!
//! // Streaming needs the `greeter.stream` scope: PERMISSION_DENIED (7) without it.
//! let request = Request::post("/palisade.demo.v1.Greeter/SayHelloStream")
//!     .header("authorization", format!("Bearer {}", token.value()))
//!     .body(String::new())
//!     .unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["grpc-status"], "7");
//!
//! // No token: UNAUTHENTICATED (16), and the handler is not called.
//! let request = Request::post("/palisade.demo.v1.Greeter/SayHello").body(String::new()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["grpc-status"], "16");
//! assert_eq!(response.headers()["grpc-message"], "missing token");
//! # }
//! ```
//!
//! With tonic, put the layer on the server (`Server::builder().layer(auth)`) and read the
//! claims in a handler with `request.extensions().get::<StandardClaims>()`; on the client,
//! `ServiceBuilder::new().layer(JwtAuthLayer::client().bearer(token).build()?).service(channel)`.
//!
//! # Keys and algorithms
//!
//! Every key is bound to its algorithm family: an HMAC secret verifies only HS256/384/512, an
//! RSA key RS256/384/512 and PS256/384/512, a P-256 key ES256, a P-384 key ES384, an Ed25519
//! key EdDSA (a JWK's `alg` narrows further). The token's `alg` picks nothing: `none` is refused,
//! and an HS256 token is never checked against an RSA public key. A token naming a `kid` is only
//! checked against keys with that `kid` (and keys without one).
//!
//! Remote keys (feature `remote`, on by default; `https` URLs need the feature `https`) are
//! fetched when the layer is built inside a tokio runtime (else at the first request), refreshed
//! in the background, refetched when a token names an unknown `kid` — at most once per
//! cool-down, however many such tokens arrive, the requests waiting for that one fetch — and
//! the last good keys keep serving while the endpoint is down.
//!
//! # Verified-token cache
//!
//! As Envoy's `jwt_cache_config`: a token verified once is kept and skips the signature check
//! next time. The cache is [`quick_cache`]'s, bounded (1000 tokens by default, least recently
//! and frequently used evicted first). An entry never outlives the token's `exp`: `exp` (plus
//! leeway) is checked against the layer's [`Clock`] at every hit, and an expired entry is
//! refused and dropped — so a test with paused tokio time ([`Clock::tokio`]) sees the same. A
//! cached token stays valid if its key is rotated out, until its `exp` or
//! [`cache_max_ttl`](JwtAuthBuilder::cache_max_ttl) (10 minutes by default), after which it is
//! verified again.
//!
//! Why quick_cache rather than moka: measured in one run on this project's machine, moka's
//! `get` took 190–256 ns and `insert` 1.1–1.9 µs (its read/write logs, clock reads and timer
//! wheel), quick_cache's 68 ns and about 240 ns — and the budget for a whole cache hit is 200 ns.
//! Moka's per-entry expiry would not help anyway: it runs on moka's own clock, so `exp` has to
//! be checked at every hit regardless.
//!
//! # Crypto backend
//!
//! jsonwebtoken 11 needs a crypto backend; this crate's features pick one: `aws-lc-rs` (the
//! default) or `rust-crypto`. Measured on this project's machine (2-core AMD EPYC), one
//! `jsonwebtoken::decode` with a 2048-bit RSA key, P-256 and Ed25519:
//!
//! | | aws-lc-rs | rust-crypto |
//! |---|---|---|
//! | HS256 | 2.6 µs | 2.6 µs |
//! | RS256 | 24.6 µs | 213 µs |
//! | ES256 | 59.9 µs | 288 µs |
//! | EdDSA | 35.4 µs | 47.2 µs |
//!
//! HMAC is a tie, but aws-lc-rs verifies RS256 8.7 times and ES256 4.8 times faster — and RS256
//! and ES256 are what identity providers sign with — so it is the default. (HMAC secrets are
//! prepared once per key with the chosen backend, rather than at every token as
//! `jsonwebtoken::crypto::verify` does; that was two thirds of an HS256 check.) Its cost is a C
//! build (aws-lc-sys, about two minutes here, with a C compiler but no cmake). Choose
//! `rust-crypto` (`default-features = false, features = ["rust-crypto", "remote"]`) for a
//! pure-Rust build. With both features on, aws-lc-rs is installed as jsonwebtoken's
//! process-wide provider by the first builder or minter ([`install_crypto_provider`]).
//!
//! # Features
//!
//! - `aws-lc-rs` (default), `rust-crypto`: the crypto backend, above.
//! - `remote` (default): JWKS URL and OIDC discovery over plain HTTP, with hyper-util's client.
//! - `https`: fetch remote keys with reqwest and rustls (aws-lc-rs, the platform's trust
//!   store), so `https://` JWKS URLs and issuers work — what production identity providers
//!   use; [`JwtAuthBuilder::http_client`] takes a client of your own.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
mod claims;
pub mod client;
mod clock;
mod config;
mod future;
mod hmac;
mod key;
mod layer;
pub mod mint;
mod policy;
mod reason;
#[cfg(feature = "remote")]
mod remote;
mod service;
mod verify;

pub use admission::JwtAdmission;
#[cfg(feature = "remote")]
pub use admission::KeysFetched;
pub use claims::{Claims, StandardClaims};
pub use clock::Clock;
pub use config::{ConfigError, DEFAULT_MAX_TOKEN_BYTES, JwtAuthBuilder};
pub use future::{ResponseBody, ResponseFuture};
pub use jsonwebtoken::{self, Algorithm};
pub use key::{Key, KeyError};
pub use layer::JwtAuthLayer;
pub use policy::Policy;
pub use reason::{REJECTED_METRIC, Reason};
pub use service::JwtAuth;

/// The reqwest this crate fetches remote keys with (feature `https`), to build a client for
/// [`JwtAuthBuilder::http_client`].
#[cfg(feature = "https")]
pub use reqwest;

/// Installs jsonwebtoken's process-wide crypto provider from this crate's backend features, if
/// none is installed yet. Builders and minters call it; call it before using `jsonwebtoken`
/// directly when both `aws-lc-rs` and `rust-crypto` are on (jsonwebtoken cannot choose then).
/// Returns whether a provider is in place (`false` only without a backend feature, where you
/// install your own with `jsonwebtoken::crypto::CryptoProvider::install_default`).
pub fn install_crypto_provider() -> bool {
    ensure_crypto_provider();
    cfg!(any(feature = "aws-lc-rs", feature = "rust-crypto"))
}

pub(crate) fn ensure_crypto_provider() {
    #[cfg(all(feature = "aws-lc-rs", feature = "rust-crypto"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
                &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
            );
        });
    }
}
