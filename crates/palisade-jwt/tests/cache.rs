//! The verified-token cache: never accepts a token after its `exp` (paused time), bounded.

mod common;

use std::time::Duration;

use common::*;
use palisade_jwt::{Clock, JwtAuthLayer};
use serde_json::json;
use tower::{Layer, ServiceExt};

async fn call(layer: &JwtAuthLayer, token: &str) -> (u16, usize, String) {
    let inner = Inner::default();
    let response = layer
        .layer(inner.clone())
        .oneshot(with_token(token))
        .await
        .unwrap();
    (code(&response), inner.calls(), message(&response))
}

#[tokio::test(start_paused = true)]
async fn the_cache_never_accepts_a_token_after_its_exp() {
    for leeway in [0, 60] {
        let layer = JwtAuthLayer::server()
            .secret(SECRET)
            .leeway(Duration::from_secs(leeway))
            .clock(Clock::tokio())
            .build()
            .unwrap();
        let token = hs256(&json!({"sub": "alice", "exp": now() + 30}));
        assert_eq!(call(&layer, &token).await.0, 0, "first sight");
        assert_eq!(layer.cached_tokens(), 1);

        // Up to exp (+ leeway), every call is a cache hit that passes.
        for _ in 0..(29 + leeway) {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(call(&layer, &token).await.0, 0);
        }
        assert_eq!(layer.cached_tokens(), 1, "still cached");

        // Past exp (+ leeway): the cached entry is refused, and dropped.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            call(&layer, &token).await,
            (16, 0, "token expired".into()),
            "leeway {leeway}"
        );
        assert_eq!(layer.cached_tokens(), 0);
        assert_eq!(
            call(&layer, &token).await.0,
            16,
            "and refused at first sight too"
        );
    }
}

#[tokio::test]
async fn a_cache_hit_is_the_same_verdict() {
    let layer = JwtAuthLayer::server().secret(SECRET).build().unwrap();
    let token = hs256(&claims("alice"));
    let (first, second) = (call(&layer, &token).await, call(&layer, &token).await);
    assert_eq!(first, second);
    assert_eq!(layer.cached_tokens(), 1);
    // Invalid tokens are never cached.
    assert_eq!(call(&layer, &hs256(&json!({"sub": "x"}))).await.0, 16);
    assert_eq!(call(&layer, "a.b.c").await.0, 16);
    assert_eq!(layer.cached_tokens(), 1);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let layer = JwtAuthLayer::server()
        .secret(SECRET)
        .cache_capacity(16)
        .build()
        .unwrap();
    for i in 0..200 {
        assert_eq!(
            call(&layer, &hs256(&claims(&format!("user-{i}")))).await.0,
            0
        );
    }
    assert!(layer.cached_tokens() <= 16, "{}", layer.cached_tokens());
    let off = JwtAuthLayer::server()
        .secret(SECRET)
        .cache_capacity(0)
        .build()
        .unwrap();
    assert_eq!(call(&off, &hs256(&claims("alice"))).await.0, 0);
    assert_eq!(off.cached_tokens(), 0);
}
