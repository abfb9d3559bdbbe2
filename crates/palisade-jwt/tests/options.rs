//! Where the token is read, and whether it is passed on.

mod common;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use common::*;
use http::{HeaderName, Request, Response};
use palisade_jwt::JwtAuthLayer;
use tower::{Layer, ServiceExt, service_fn};

/// Calls through `layer`; the code and the headers the inner service saw (if called).
async fn call(layer: &JwtAuthLayer, request: Request<String>) -> (u16, Option<http::HeaderMap>) {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let service = layer.layer(service_fn(move |request: Request<String>| {
        *seen2.lock().unwrap() = Some(request.headers().clone());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    let response = service.oneshot(request).await.unwrap();
    let code = response
        .headers()
        .get("grpc-status")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    (code, seen.lock().unwrap().take())
}

#[tokio::test]
async fn the_token_is_forwarded_unless_told_otherwise() {
    let token = hs256(&claims("alice"));
    let (code, headers) = call(
        &JwtAuthLayer::server().secret(SECRET).build().unwrap(),
        with_token(&token),
    )
    .await;
    assert_eq!(code, 0);
    assert!(headers.unwrap().contains_key("authorization"));

    let stripping = JwtAuthLayer::server()
        .secret(SECRET)
        .forward_token(false)
        .build()
        .unwrap();
    let (code, headers) = call(&stripping, with_token(&token)).await;
    assert_eq!(code, 0);
    assert!(!headers.unwrap().contains_key("authorization"));
}

#[tokio::test]
async fn another_header_with_or_without_a_scheme() {
    let token = hs256(&claims("alice"));
    let raw = JwtAuthLayer::server()
        .secret(SECRET)
        .header(HeaderName::from_static("x-jwt-assertion"))
        .scheme(None)
        .build()
        .unwrap();
    let mut request = request(SAY_HELLO, Some(&bearer(&token)));
    assert_eq!(
        call(&raw, request).await.0,
        16,
        "the authorization header is not read"
    );
    request = self::request(SAY_HELLO, None);
    request
        .headers_mut()
        .insert("x-jwt-assertion", token.parse().unwrap());
    assert_eq!(call(&raw, request).await.0, 0);

    let custom = JwtAuthLayer::server()
        .secret(SECRET)
        .scheme(Some("JWT"))
        .build()
        .unwrap();
    assert_eq!(
        call(
            &custom,
            self::request(SAY_HELLO, Some(&format!("jwt {token}")))
        )
        .await
        .0,
        0
    );
    assert_eq!(call(&custom, with_token(&token)).await.0, 16);
}

#[tokio::test]
async fn the_verified_subject_and_a_rejection_reach_the_record_a_layer_outside_made() {
    use palisade_core::{Rpc, Side};

    let layer = JwtAuthLayer::server().secret(SECRET).build().unwrap();
    // A record made outside (logging, trace, RecordLayer): jwt writes the subject into it,
    // on the first call and on the cached second one alike.
    let token = hs256(&claims("alice"));
    for _ in 0..2 {
        let mut request = with_token(&token);
        let record = Rpc::get_or_insert(request.extensions_mut(), Side::Server).clone();
        assert_eq!(call(&layer, request).await.0, 0);
        assert_eq!(record.subject(), Some("alice"));
        assert_eq!(record.rejected_by(), None);
    }

    // A rejected call: the record names the layer, and holds no subject.
    let mut request = with_token("not.a.token");
    let record = Rpc::get_or_insert(request.extensions_mut(), Side::Server).clone();
    assert_eq!(call(&layer, request).await.0, 16);
    assert_eq!(record.rejected_by(), Some("jwt"));
    assert_eq!(record.subject(), None);

    // No record outside: jwt makes none.
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let service = layer.layer(service_fn(move |request: Request<String>| {
        *seen2.lock().unwrap() = Some(Rpc::of(&request).is_some());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    service.oneshot(with_token(&token)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(false));
}
