//! One test per bad input: each is answered with the right gRPC code, a short message that
//! leaks nothing, the reason counted in `palisade_auth_rejected_total` — and the inner service
//! is never called.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::*;
use http::{HeaderValue, Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_core::Matcher;
use palisade_jwt::{Claims, JwtAuthLayer, Key, Policy, Reason, StandardClaims};
use serde_json::json;
use tower::{Layer, Service, ServiceExt};

const UNAUTHENTICATED: u16 = 16;
const PERMISSION_DENIED: u16 = 7;

/// A layer over [`SECRET`] (HS256) and the RSA test key (kid `rsa`), issuer `https://issuer.test`
/// accepted when present-checked by the test that sets it.
fn layer() -> JwtAuthLayer {
    JwtAuthLayer::server()
        .secret(SECRET)
        .key(Key::from_pem(RSA_PUB).unwrap().with_kid("rsa"))
        .build()
        .unwrap()
}

/// Sends `request` through `layer` around a counting inner service; asserts the code, that the
/// inner service was not called, the metric's reason, and that the message names neither the
/// token nor anything in it.
async fn assert_rejected<C: Claims>(
    layer: &JwtAuthLayer<C>,
    request: Request<String>,
    code: u16,
    reason: Reason,
) {
    let inner = Inner::default();
    let mut service = layer.layer(inner.clone());
    let authorization = request
        .headers()
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    service.ready().await.unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Rejections are decided in `call`, so the metric is recorded inside this scope.
    let future = metrics::with_local_recorder(&recorder, || service.call(request));
    let response = future.await.unwrap();

    assert_eq!(code_of(&response), code, "{}", message(&response));
    assert_eq!(inner.calls(), 0, "the inner service was called");
    assert_eq!(
        response.status(),
        200,
        "a gRPC rejection, not an HTTP error"
    );
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let text = message(&response);
    assert!(text.len() <= 32, "short message: {text:?}");
    assert_eq!(
        text,
        reason.message().replace(' ', "%20").replace("%20", " ")
    );
    if let Some(authorization) = authorization {
        for part in authorization.split(['.', ' ']).filter(|p| p.len() > 3) {
            assert!(!text.contains(part), "the message leaks {part:?}");
        }
    }
    let counted: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "palisade_auth_rejected_total")
        .map(|(key, _, _, value)| {
            let labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (labels, value)
        })
        .collect();
    assert_eq!(
        counted,
        vec![(
            vec![("reason".to_owned(), reason.as_str().to_owned())],
            DebugValue::Counter(1)
        )]
    );
}

fn code_of<B>(response: &Response<B>) -> u16 {
    code(response)
}

/// base64url of a JSON value.
fn part(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn a_valid_token_reaches_the_service_with_its_claims() {
    let inner = Inner::default();
    let service = layer().layer(inner.clone());
    let response = service
        .oneshot(with_token(&hs256(&claims("alice"))))
        .await
        .unwrap();
    assert_eq!(code(&response), 0);
    assert_eq!(response.body().get_ref(), "alice");
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn missing_header() {
    assert_rejected(
        &layer(),
        request(SAY_HELLO, None),
        UNAUTHENTICATED,
        Reason::Missing,
    )
    .await;
}

#[tokio::test]
async fn wrong_scheme() {
    let token = hs256(&claims("alice"));
    for value in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        format!("Token {token}"),
    ] {
        assert_rejected(
            &layer(),
            request(SAY_HELLO, Some(&value)),
            UNAUTHENTICATED,
            Reason::Missing,
        )
        .await;
    }
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let token = hs256(&claims("alice"));
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let inner = Inner::default();
        let response = layer()
            .layer(inner.clone())
            .oneshot(request(SAY_HELLO, Some(&format!("{scheme} {token}"))))
            .await
            .unwrap();
        assert_eq!((code(&response), inner.calls()), (0, 1), "{scheme}");
    }
}

#[tokio::test]
async fn empty_token() {
    for value in ["Bearer", "Bearer ", "Bearer    "] {
        assert_rejected(
            &layer(),
            request(SAY_HELLO, Some(value)),
            UNAUTHENTICATED,
            Reason::Malformed,
        )
        .await;
    }
}

#[tokio::test]
async fn garbage() {
    for garbage in [
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "a..c",
        "a.b.c.d.e",
        "{}.{}.{}",
        "WyJIUzI1NiJd.e30.c2ln",
    ] {
        assert_rejected(
            &layer(),
            request(SAY_HELLO, Some(&bearer(garbage))),
            UNAUTHENTICATED,
            Reason::Malformed,
        )
        .await;
    }
}

#[tokio::test]
async fn truncated_token() {
    let token = hs256(&claims("alice"));
    // Cut inside the payload: two parts only.
    let cut = &token[..token.find('.').unwrap() + 10];
    assert_rejected(
        &layer(),
        with_token(cut),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
    // Cut inside the signature: not base64url of any length any more.
    let short = &token[..token.len() - 6];
    assert_rejected(
        &layer(),
        with_token(short),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
    // Cut to a whole number of bytes: the signature no longer verifies.
    let (message, signature) = token.rsplit_once('.').unwrap();
    let half = URL_SAFE_NO_PAD.encode(&URL_SAFE_NO_PAD.decode(signature).unwrap()[..16]);
    assert_rejected(
        &layer(),
        with_token(&format!("{message}.{half}")),
        UNAUTHENTICATED,
        Reason::BadSignature,
    )
    .await;
    // No signature at all.
    assert_rejected(
        &layer(),
        with_token(&format!("{message}.")),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
}

#[tokio::test]
async fn bad_base64() {
    let token = hs256(&claims("alice"));
    let (header, rest) = token.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    for bad in [
        format!("{header}!.{payload}.{signature}"),
        format!("{header}.{payload}.{signature}$"),
        format!("{header}=.{payload}.{signature}"),
        format!(
            "{}.{payload}.{signature}",
            header.replace(|c: char| c.is_ascii_alphabetic(), "+")
        ),
    ] {
        assert_rejected(
            &layer(),
            with_token(&bad),
            UNAUTHENTICATED,
            Reason::Malformed,
        )
        .await;
    }
}

#[tokio::test]
async fn bad_base64_in_the_payload() {
    // Signed correctly, but the payload is not base64url: caught after the signature check.
    let header = part(&json!({"alg": "HS256"}));
    let message = format!("{header}.@@@@");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_rejected(
        &layer(),
        with_token(&format!("{message}.{signature}")),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
}

#[tokio::test]
async fn alg_none() {
    let payload = part(&claims("mallory"));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = part(&json!({"alg": alg, "typ": "JWT"}));
        // With an empty signature (the usual form) and with a made-up one.
        assert_rejected(
            &layer(),
            with_token(&format!("{header}.{payload}.")),
            UNAUTHENTICATED,
            Reason::Malformed,
        )
        .await;
        assert_rejected(
            &layer(),
            with_token(&format!("{header}.{payload}.c2ln")),
            UNAUTHENTICATED,
            Reason::Algorithm,
        )
        .await;
    }
}

#[tokio::test]
async fn hs256_token_against_an_rsa_key() {
    // The classic confusion: HMAC with the RSA public key as the secret.
    let rsa_only = JwtAuthLayer::server().pem(RSA_PUB).build().unwrap();
    for secret in [RSA_PUB, &URL_SAFE_NO_PAD.encode(RSA_PUB).into_bytes()[..]] {
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret),
            None,
            &claims("mallory"),
        );
        assert_rejected(
            &rsa_only,
            with_token(&forged),
            UNAUTHENTICATED,
            Reason::Algorithm,
        )
        .await;
    }
    // Also with a kid naming the RSA key.
    let with_kid = JwtAuthLayer::server()
        .key(Key::from_pem(RSA_PUB).unwrap().with_kid("rsa"))
        .build()
        .unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUB),
        Some("rsa"),
        &claims("mallory"),
    );
    assert_rejected(
        &with_kid,
        with_token(&forged),
        UNAUTHENTICATED,
        Reason::Algorithm,
    )
    .await;
}

#[tokio::test]
async fn algorithm_outside_the_allowed_list() {
    let hs512_only = JwtAuthLayer::server()
        .secret(SECRET)
        .algorithms([Algorithm::HS512])
        .build()
        .unwrap();
    assert_rejected(
        &hs512_only,
        with_token(&hs256(&claims("alice"))),
        UNAUTHENTICATED,
        Reason::Algorithm,
    )
    .await;
}

#[tokio::test]
async fn bad_signature() {
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret"),
        None,
        &claims("mallory"),
    );
    assert_rejected(
        &layer(),
        with_token(&other),
        UNAUTHENTICATED,
        Reason::BadSignature,
    )
    .await;
    // A valid signature moved onto other claims.
    let token = hs256(&claims("alice"));
    let signature = token.rsplit('.').next().unwrap();
    let header = token.split('.').next().unwrap();
    let tampered = format!("{header}.{}.{signature}", part(&claims("admin")));
    assert_rejected(
        &layer(),
        with_token(&tampered),
        UNAUTHENTICATED,
        Reason::BadSignature,
    )
    .await;
    // An RS256 token signed by another RSA key.
    let other_rsa = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA2).unwrap(),
        Some("rsa"),
        &claims("mallory"),
    );
    assert_rejected(
        &layer(),
        with_token(&other_rsa),
        UNAUTHENTICATED,
        Reason::BadSignature,
    )
    .await;
}

#[tokio::test]
async fn expired_beyond_leeway() {
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 120}));
    assert_rejected(
        &layer(),
        with_token(&expired),
        UNAUTHENTICATED,
        Reason::Expired,
    )
    .await;
    // Within the default leeway of 60 s it still passes.
    let inner = Inner::default();
    let within = hs256(&json!({"sub": "alice", "exp": now() - 20}));
    let response = layer()
        .layer(inner.clone())
        .oneshot(with_token(&within))
        .await
        .unwrap();
    assert_eq!((code(&response), inner.calls()), (0, 1));
    // With no leeway it does not.
    let strict = JwtAuthLayer::server()
        .secret(SECRET)
        .leeway(Duration::ZERO)
        .build()
        .unwrap();
    assert_rejected(
        &strict,
        with_token(&within),
        UNAUTHENTICATED,
        Reason::Expired,
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid() {
    let early = hs256(&json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}));
    assert_rejected(
        &layer(),
        with_token(&early),
        UNAUTHENTICATED,
        Reason::NotYetValid,
    )
    .await;
}

#[tokio::test]
async fn wrong_issuer() {
    let layer = JwtAuthLayer::server()
        .secret(SECRET)
        .issuer("https://issuer.test")
        .build()
        .unwrap();
    let mut wrong = claims("alice");
    wrong["iss"] = json!("https://evil.test");
    assert_rejected(
        &layer,
        with_token(&hs256(&wrong)),
        UNAUTHENTICATED,
        Reason::Issuer,
    )
    .await;
    // A configured issuer makes `iss` required.
    assert_rejected(
        &layer,
        with_token(&hs256(&claims("alice"))),
        UNAUTHENTICATED,
        Reason::Issuer,
    )
    .await;
    let mut right = claims("alice");
    right["iss"] = json!("https://issuer.test");
    let response = layer
        .layer(Inner::default())
        .oneshot(with_token(&hs256(&right)))
        .await
        .unwrap();
    assert_eq!(code(&response), 0);
}

#[tokio::test]
async fn wrong_audience() {
    let layer = JwtAuthLayer::server()
        .secret(SECRET)
        .audience("greeter")
        .build()
        .unwrap();
    for aud in [json!("billing"), json!(["billing", "admin"]), json!([])] {
        let mut wrong = claims("alice");
        wrong["aud"] = aud;
        assert_rejected(
            &layer,
            with_token(&hs256(&wrong)),
            UNAUTHENTICATED,
            Reason::Audience,
        )
        .await;
    }
    assert_rejected(
        &layer,
        with_token(&hs256(&claims("alice"))),
        UNAUTHENTICATED,
        Reason::Audience,
    )
    .await;
    for aud in [json!("greeter"), json!(["billing", "greeter"])] {
        let mut right = claims("alice");
        right["aud"] = aud;
        let response = layer
            .layer(Inner::default())
            .oneshot(with_token(&hs256(&right)))
            .await
            .unwrap();
        assert_eq!(code(&response), 0);
    }
}

#[tokio::test]
async fn unknown_kid() {
    let layer = JwtAuthLayer::server()
        .key(Key::from_pem(RSA_PUB).unwrap().with_kid("rsa"))
        .build()
        .unwrap();
    let token = sign(
        Algorithm::RS256,
        &signing_key(Algorithm::RS256),
        Some("secret-kid-name-42"),
        &claims("alice"),
    );
    assert_rejected(
        &layer,
        with_token(&token),
        UNAUTHENTICATED,
        Reason::UnknownKey,
    )
    .await;
}

#[tokio::test]
async fn one_mib_token() {
    let huge = "A".repeat(1 << 20);
    assert_rejected(
        &layer(),
        with_token(&huge),
        UNAUTHENTICATED,
        Reason::TooLarge,
    )
    .await;
    // Just over the default 8 KiB, even with a valid-looking structure.
    let padded = hs256(&json!({"sub": "alice", "exp": now() + 60, "pad": "x".repeat(8 * 1024)}));
    assert_rejected(
        &layer(),
        with_token(&padded),
        UNAUTHENTICATED,
        Reason::TooLarge,
    )
    .await;
    // The limit is configurable.
    let small = JwtAuthLayer::server()
        .secret(SECRET)
        .max_token_bytes(64)
        .build()
        .unwrap();
    assert_rejected(
        &small,
        with_token(&hs256(&claims("alice"))),
        UNAUTHENTICATED,
        Reason::TooLarge,
    )
    .await;
}

#[tokio::test]
async fn non_ascii_metadata() {
    let token = hs256(&claims("alice"));
    for bytes in [
        format!("Bearer {token}\u{e9}").into_bytes(),
        format!("Bearer \u{1F600}{token}").into_bytes(),
        [b"Bearer ".as_slice(), b"\xff\xfe\x80"].concat(),
    ] {
        let mut request = request(SAY_HELLO, None);
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_bytes(&bytes).unwrap());
        assert_rejected(&layer(), request, UNAUTHENTICATED, Reason::Malformed).await;
    }
}

#[tokio::test]
async fn two_authorization_headers() {
    let mut request = with_token(&hs256(&claims("alice")));
    request
        .headers_mut()
        .append("authorization", HeaderValue::from_static("Bearer other"));
    assert_rejected(&layer(), request, UNAUTHENTICATED, Reason::Malformed).await;
}

#[tokio::test]
async fn missing_exp() {
    let token = hs256(&json!({"sub": "alice"}));
    assert_rejected(
        &layer(),
        with_token(&token),
        UNAUTHENTICATED,
        Reason::MissingClaim,
    )
    .await;
    let required = JwtAuthLayer::server()
        .secret(SECRET)
        .require_claims(["sub"])
        .build()
        .unwrap();
    assert_rejected(
        &required,
        with_token(&hs256(&json!({"exp": now() + 60}))),
        UNAUTHENTICATED,
        Reason::MissingClaim,
    )
    .await;
    let lenient = JwtAuthLayer::server()
        .secret(SECRET)
        .require_exp(false)
        .build()
        .unwrap();
    let response = lenient
        .layer(Inner::default())
        .oneshot(with_token(&token))
        .await
        .unwrap();
    assert_eq!(code(&response), 0);
}

#[tokio::test]
async fn malformed_claims() {
    // Registered claims of the wrong type, or no JSON object at all.
    for payload in [
        json!({"sub": "alice", "exp": "tomorrow"}),
        json!({"sub": 42, "exp": now() + 60}),
        json!({"aud": {"a": 1}, "exp": now() + 60}),
        json!([1, 2]),
        json!("text"),
    ] {
        assert_rejected(
            &layer(),
            with_token(&hs256(&payload)),
            UNAUTHENTICATED,
            Reason::Malformed,
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_critical_header() {
    let header = part(&json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}));
    let message = format!("{header}.{}", part(&claims("alice")));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_rejected(
        &layer(),
        with_token(&format!("{message}.{signature}")),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
}

fn scoped() -> JwtAuthLayer {
    JwtAuthLayer::server()
        .secret(SECRET)
        .skip(Matcher::health_and_reflection())
        .policy(
            Matcher::method("palisade.demo.v1.Greeter/SayHelloStream"),
            Policy::authenticated().scopes(["greeter.stream"]),
        )
        .policy(
            Matcher::method("palisade.demo.v1.Greeter/Admin"),
            Policy::authenticated().check(|c: &StandardClaims| c.subject() == Some("root")),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn missing_scope_is_permission_denied() {
    let path = "/palisade.demo.v1.Greeter/SayHelloStream";
    let mut other_scope = claims("alice");
    other_scope["scope"] = json!("greeter.read greeter.streaming");
    for token in [hs256(&claims("alice")), hs256(&other_scope)] {
        let request = request(path, Some(&bearer(&token)));
        assert_rejected(
            &scoped(),
            request,
            PERMISSION_DENIED,
            Reason::InsufficientScope,
        )
        .await;
    }
    let mut with_scope = claims("alice");
    with_scope["scope"] = json!("greeter.read greeter.stream");
    let response = scoped()
        .layer(Inner::default())
        .oneshot(request(path, Some(&bearer(&hs256(&with_scope)))))
        .await
        .unwrap();
    assert_eq!(code(&response), 0);
    // An invalid token on a scoped method is still UNAUTHENTICATED.
    assert_rejected(
        &scoped(),
        request(path, None),
        UNAUTHENTICATED,
        Reason::Missing,
    )
    .await;
}

#[tokio::test]
async fn failing_claims_check_is_permission_denied() {
    let path = "/palisade.demo.v1.Greeter/Admin";
    assert_rejected(
        &scoped(),
        request(path, Some(&bearer(&hs256(&claims("alice"))))),
        PERMISSION_DENIED,
        Reason::ClaimsCheck,
    )
    .await;
    let response = scoped()
        .layer(Inner::default())
        .oneshot(request(path, Some(&bearer(&hs256(&claims("root"))))))
        .await
        .unwrap();
    assert_eq!(code(&response), 0);
}

#[tokio::test]
async fn public_and_optional_methods() {
    let inner = Inner::default();
    let health = request("/grpc.health.v1.Health/Check", Some("Bearer garbage"));
    let response = scoped().layer(inner.clone()).oneshot(health).await.unwrap();
    assert_eq!(
        (code(&response), inner.calls()),
        (0, 1),
        "public: the token is not even read"
    );

    let optional = JwtAuthLayer::server()
        .secret(SECRET)
        .default_policy(Policy::optional())
        .build()
        .unwrap();
    let response = optional
        .layer(inner.clone())
        .oneshot(request(SAY_HELLO, None))
        .await
        .unwrap();
    assert_eq!(
        (code(&response), response.body().get_ref().as_str()),
        (0, "")
    );
    let response = optional
        .layer(inner.clone())
        .oneshot(with_token(&hs256(&claims("bob"))))
        .await
        .unwrap();
    assert_eq!(response.body().get_ref(), "bob");
    assert_rejected(
        &optional,
        with_token("garbage"),
        UNAUTHENTICATED,
        Reason::Malformed,
    )
    .await;
}

#[derive(Clone, serde::Deserialize)]
struct TenantClaims {
    sub: String,
    tenant: String,
}

#[tokio::test]
async fn claims_of_your_own() {
    let layer = JwtAuthLayer::server()
        .claims::<TenantClaims>()
        .secret(SECRET)
        .default_policy(Policy::authenticated().check(|c: &TenantClaims| c.tenant == "acme"))
        .build()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let service = layer.layer(tower::service_fn(move |request: Request<String>| {
        let claims = request.extensions().get::<TenantClaims>().cloned();
        *seen2.lock().unwrap() = claims.map(|c| (c.sub, c.tenant));
        async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
    }));
    let mut acme = claims("alice");
    acme["tenant"] = json!("acme");
    service
        .clone()
        .oneshot(with_token(&hs256(&acme)))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        Some(("alice".to_owned(), "acme".to_owned()))
    );

    // Missing a field of the claims type: UNAUTHENTICATED.
    assert_rejected(
        &layer,
        with_token(&hs256(&claims("bob"))),
        UNAUTHENTICATED,
        Reason::InvalidClaims,
    )
    .await;
    let mut other = claims("carol");
    other["tenant"] = json!("globex");
    let response = service.oneshot(with_token(&hs256(&other))).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "7");
}

#[tokio::test]
async fn every_algorithm_verifies_with_its_own_key_only() {
    let layer = JwtAuthLayer::server()
        .secret(SECRET)
        .pem(RSA_PUB)
        .pem(EC256_PUB)
        .pem(EC384_PUB)
        .pem(ED_PUB)
        .build()
        .unwrap();
    for alg in [
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
    ] {
        let inner = Inner::default();
        let token = sign(alg, &signing_key(alg), None, &claims(&format!("{alg:?}")));
        let response = layer
            .layer(inner.clone())
            .oneshot(with_token(&token))
            .await
            .unwrap();
        assert_eq!(
            (code(&response), response.body().get_ref().as_str()),
            (0, format!("{alg:?}").as_str()),
            "{alg:?}"
        );
    }
    // ES256 claimed for a P-384 signature, and the like, fail.
    let p384 = sign(
        Algorithm::ES384,
        &signing_key(Algorithm::ES384),
        None,
        &claims("x"),
    );
    let (_, rest) = p384.split_once('.').unwrap();
    let relabelled = format!("{}.{rest}", part(&json!({"alg": "ES256"})));
    assert_rejected(
        &layer,
        with_token(&relabelled),
        UNAUTHENTICATED,
        Reason::BadSignature,
    )
    .await;
}

#[tokio::test]
async fn extreme_numeric_dates() {
    let passes = |payload: serde_json::Value, layer: JwtAuthLayer| async move {
        let inner = Inner::default();
        let response = layer
            .layer(inner.clone())
            .oneshot(with_token(&hs256(&payload)))
            .await
            .unwrap();
        assert_eq!((code(&response), inner.calls()), (0, 1), "{payload}");
    };
    // Far in the future, past `i64::MAX` or at `u64::MAX`: a token that never expires.
    let far = [
        json!(u64::MAX),
        json!(i64::MAX as u64 + 1),
        json!(1.8e19),
        json!(now() as f64 + 60.5),
    ];
    for exp in far.clone() {
        passes(json!({"sub": "alice", "exp": exp}), layer()).await;
        passes(json!({"sub": "alice", "exp": exp, "iat": exp}), layer()).await;
    }
    // The widest leeway and cache lifetime saturate rather than overflow; a cache hit too.
    let wide = JwtAuthLayer::server()
        .secret(SECRET)
        .leeway(Duration::MAX)
        .cache_max_ttl(Duration::MAX)
        .build()
        .unwrap();
    for exp in far {
        passes(json!({"sub": "alice", "exp": exp, "nbf": 0}), wide.clone()).await;
        passes(json!({"sub": "alice", "exp": exp, "nbf": 0}), wide.clone()).await;
    }
    passes(json!({"sub": "alice", "exp": 0, "nbf": u64::MAX}), wide).await;
    // Not before the end of time.
    for nbf in [json!(u64::MAX), json!(1.8e19)] {
        assert_rejected(
            &layer(),
            with_token(&hs256(
                &json!({"sub": "alice", "exp": u64::MAX, "nbf": nbf}),
            )),
            UNAUTHENTICATED,
            Reason::NotYetValid,
        )
        .await;
    }
    // Negative, beyond `u64`, or no number at all: malformed, in any of the three claims.
    for bad in [
        json!(-1),
        json!(i64::MIN),
        json!(-0.5),
        json!(1e300),
        json!(-1e300),
        json!(18446744073709551616.0),
        json!(true),
        json!([1]),
    ] {
        for claim in ["exp", "nbf", "iat"] {
            let mut payload = json!({"sub": "alice", "exp": now() + 60});
            payload[claim] = bad.clone();
            assert_rejected(
                &layer(),
                with_token(&hs256(&payload)),
                UNAUTHENTICATED,
                Reason::Malformed,
            )
            .await;
        }
    }
}
