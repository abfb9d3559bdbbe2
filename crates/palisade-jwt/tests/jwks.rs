//! Remote keys against a local HTTP server on 127.0.0.1:0: fetch, rotation on an unknown `kid`,
//! one fetch per cool-down however many unknown kids arrive, last good keys while the endpoint
//! is down, OIDC discovery; and JWKS files.
#![cfg(feature = "remote")]

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey};
use palisade_jwt::{ConfigError, JwtAuthLayer};
use serde_json::json;
use tower::{Layer, ServiceExt};

fn rs256(key: &[u8], kid: &str, sub: &str) -> String {
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(key).unwrap(),
        Some(kid),
        &claims(sub),
    )
}

fn jwks_of(key: &[u8], kid: &str) -> String {
    jwks(&[jwk(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(key).unwrap(),
        kid,
    )])
}

/// Sends a token through the layer; the gRPC code and the subject the inner service saw.
async fn call(layer: &JwtAuthLayer, token: &str) -> (u16, String) {
    let inner = Inner::default();
    let response = layer
        .layer(inner.clone())
        .oneshot(with_token(token))
        .await
        .unwrap();
    let code = code(&response);
    assert_eq!(
        inner.calls(),
        usize::from(code == 0),
        "the inner service is called only when valid"
    );
    (code, response.into_body().get_ref().clone())
}

#[tokio::test]
async fn keys_come_from_a_jwks_url() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    let layer = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .build()
        .unwrap();
    // The first request may come before the first fetch ends: it waits for it.
    assert_eq!(
        call(&layer, &rs256(RSA, "a", "alice")).await,
        (0, "alice".into())
    );
    assert_eq!(
        call(&layer, &rs256(RSA2, "a", "mallory")).await.0,
        16,
        "another key, same kid"
    );
    assert_eq!(endpoint.jwks_hits(), 1);
}

#[tokio::test]
async fn rotation_is_picked_up_on_an_unknown_kid() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    let layer = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .jwks_refetch_cooldown(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice")).await.0, 0);
    assert_eq!(endpoint.jwks_hits(), 1);

    // The issuer rotates to key "b" and drops "a".
    endpoint.set_jwks(jwks_of(RSA2, "b"));
    assert_eq!(
        call(&layer, &rs256(RSA2, "b", "bob")).await,
        (0, "bob".into())
    );
    assert_eq!(endpoint.jwks_hits(), 2);
    // A cached token of "a" stays valid until it expires (as Envoy's cache); a new one is not.
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice")).await.0, 0);
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice2")).await.0, 16);
}

/// A call whose token names a key not fetched yet waits in its own future (the ready inner
/// service with it), then goes on as any other: its claims inserted, the token header removed
/// when it is not forwarded.
#[tokio::test]
async fn a_call_that_waited_for_the_keys_is_passed_on_as_any_other() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    let layer = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .jwks_refetch_cooldown(Duration::ZERO)
        .forward_token(false)
        .build()
        .unwrap();
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice")).await.0, 0);
    endpoint.set_jwks(jwks_of(RSA2, "b"));

    let mut service = layer.layer(tower::service_fn(
        |request: http::Request<String>| async move {
            let subject = request
                .extensions()
                .get::<palisade_jwt::StandardClaims>()
                .and_then(|claims| claims.subject().map(str::to_owned));
            let token = request.headers().get("authorization").cloned();
            Ok::<_, std::convert::Infallible>(http::Response::new(format!("{subject:?} {token:?}")))
        },
    ));
    let future = tower::Service::call(
        service.ready().await.unwrap(),
        with_token(&rs256(RSA2, "b", "bob")),
    );
    assert!(future.is_waiting(), "an unknown kid waits for the refetch");
    let response = future.await.unwrap();
    assert_eq!(response.body().get_ref(), r#"Some("bob") None"#);
    assert_eq!(endpoint.jwks_hits(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_is_at_most_one_fetch_per_cooldown() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    let layer = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .jwks_refetch_cooldown(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice")).await.0, 0);
    assert_eq!(endpoint.jwks_hits(), 1);

    let key = EncodingKey::from_rsa_pem(RSA).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let tokens: Vec<String> = (0..1000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let claims = claims("mallory");
            sign(
                Algorithm::RS256,
                &key,
                Some(&format!("{seed:016x}")),
                &claims,
            )
        })
        .collect();
    for wave in 0..2 {
        let results = join_all(tokens.iter().map(|t| call(&layer, t))).await;
        assert!(results.iter().all(|(code, _)| *code == 16), "wave {wave}");
        // The first fetch on start, and at most one refetch in the cool-down, for 2000 unknown kids.
        assert!(
            layer.jwks_fetches() <= 2,
            "{} fetches",
            layer.jwks_fetches()
        );
        assert!(
            endpoint.jwks_hits() <= 2,
            "{} fetches",
            endpoint.jwks_hits()
        );
    }
    // The known key still verifies.
    assert_eq!(call(&layer, &rs256(RSA, "a", "alice")).await.0, 0);
}

#[tokio::test]
async fn the_last_good_keys_serve_while_the_endpoint_is_down() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    // Refetches on unknown kids at once, background refresh in an hour.
    let on_demand = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .jwks_refetch_cooldown(Duration::ZERO)
        .jwks_refresh_interval(Duration::from_secs(3600))
        .cache_capacity(0)
        .build()
        .unwrap();
    // Background refresh every 50 ms.
    let background = JwtAuthLayer::server()
        .jwks_url(endpoint.url())
        .jwks_refresh_interval(Duration::from_millis(50))
        .cache_capacity(0)
        .build()
        .unwrap();
    for layer in [&on_demand, &background] {
        assert_eq!(call(layer, &rs256(RSA, "a", "alice")).await.0, 0);
    }
    assert_eq!(on_demand.jwks_fetches(), 1);

    // The endpoint answers 500: the next background refresh fails…
    endpoint.set_failing(true);
    let hits = endpoint.jwks_hits();
    endpoint.wait_for_jwks_hits(hits + 1).await;
    assert_eq!(
        call(&background, &rs256(RSA, "a", "alice")).await,
        (0, "alice".into())
    );
    // …and so does the refetch for an unknown kid.
    assert_eq!(call(&on_demand, &rs256(RSA2, "zz", "mallory")).await.0, 16);
    assert_eq!(on_demand.jwks_fetches(), 2);
    assert_eq!(
        call(&on_demand, &rs256(RSA, "a", "alice")).await,
        (0, "alice".into())
    );

    // The endpoint is gone: connection refused.
    drop(endpoint);
    assert_eq!(call(&on_demand, &rs256(RSA2, "zz", "mallory")).await.0, 16);
    assert_eq!(on_demand.jwks_fetches(), 3);
    for layer in [&on_demand, &background] {
        assert_eq!(
            call(layer, &rs256(RSA, "a", "alice")).await,
            (0, "alice".into())
        );
    }
}

#[tokio::test]
async fn keys_unavailable_when_the_endpoint_never_answered() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let layer = JwtAuthLayer::server()
        .jwks_url(format!("http://{closed}/jwks.json"))
        .build()
        .unwrap();
    let inner = Inner::default();
    let response = layer
        .layer(inner.clone())
        .oneshot(with_token(&rs256(RSA, "a", "alice")))
        .await
        .unwrap();
    assert_eq!(code(&response), 16);
    assert_eq!(message(&response), "token cannot be verified");
    assert_eq!(inner.calls(), 0);
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_sets_the_issuer() {
    let endpoint = Endpoint::start(jwks_of(RSA, "a")).await;
    let layer = JwtAuthLayer::server()
        .oidc_issuer(endpoint.issuer())
        .build()
        .unwrap();
    let key = EncodingKey::from_rsa_pem(RSA).unwrap();
    let mut good = claims("alice");
    good["iss"] = json!(endpoint.issuer());
    let token = sign(Algorithm::RS256, &key, Some("a"), &good);
    assert_eq!(call(&layer, &token).await, (0, "alice".into()));
    let mut other = claims("alice");
    other["iss"] = json!("http://elsewhere.test");
    assert_eq!(
        call(&layer, &sign(Algorithm::RS256, &key, Some("a"), &other))
            .await
            .0,
        16
    );
    let state = endpoint.state.lock().unwrap();
    assert_eq!((state.discovery_hits, state.jwks_hits), (1, 1));
}

#[tokio::test]
async fn keys_from_a_jwks_file() {
    let path = std::env::temp_dir().join(format!("palisade-jwt-test-{}.json", std::process::id()));
    std::fs::write(
        &path,
        jwks(&[
            jwk(Algorithm::ES256, &signing_key(Algorithm::ES256), "ec"),
            jwk(Algorithm::EdDSA, &signing_key(Algorithm::EdDSA), "ed"),
            jwk(Algorithm::PS256, &signing_key(Algorithm::PS256), "ps"),
        ]),
    )
    .unwrap();
    let layer = JwtAuthLayer::server().jwks_file(&path).build().unwrap();
    std::fs::remove_file(&path).unwrap();
    for (alg, kid) in [
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::PS256, "ps"),
    ] {
        let token = sign(alg, &signing_key(alg), Some(kid), &claims(kid));
        assert_eq!(call(&layer, &token).await, (0, kid.into()), "{alg:?}");
    }
    // The JWK's `alg` binds the key: the PS256 key does not verify RS256.
    let rs = sign(
        Algorithm::RS256,
        &signing_key(Algorithm::RS256),
        Some("ps"),
        &claims("x"),
    );
    assert_eq!(call(&layer, &rs).await.0, 16);

    assert!(matches!(
        JwtAuthLayer::server()
            .jwks_file("/nonexistent/jwks.json")
            .build(),
        Err(ConfigError::Io { .. })
    ));
    assert!(matches!(
        JwtAuthLayer::server().build(),
        Err(ConfigError::NoKeys)
    ));
    assert!(matches!(
        JwtAuthLayer::server().jwks_url("ftp://x/jwks").build(),
        Err(ConfigError::Url(_))
    ));
}
