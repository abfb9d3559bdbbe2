//! The client layer: waits for tokens, never past the call's deadline or the maximum wait.

mod common;

use std::time::Duration;

use common::{Counting, HELLO, quota, rejected, request};
use http::HeaderValue;
use palisade_core::deadline::grpc_timeout;
use palisade_ratelimit::{ClientRateLimitLayer, Limit};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt};

fn with_timeout(timeout: &'static str) -> http::Request<palisade_demo::frames::GrpcBody> {
    let mut request = request(HELLO, None);
    request
        .headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static(timeout));
    request
}

/// Lets spawned calls run as far as they can at the current (paused) time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_over_quota_waits_for_its_token_then_goes() {
    let counting = Counting::new();
    let layer = ClientRateLimitLayer::new(Limit::global(quota(10, 1)));
    let service = layer.layer(counting.clone());
    assert!(!rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
    let start = Instant::now();
    let waiting = tokio::spawn(service.clone().oneshot(request(HELLO, None)));
    settle().await;
    assert_eq!(counting.calls(), 1, "waiting, not sent");
    advance(Duration::from_millis(99)).await;
    settle().await;
    assert_eq!(counting.calls(), 1, "still waiting");
    advance(Duration::from_millis(1)).await;
    let response = waiting.await.unwrap().unwrap();
    assert!(!rejected(&response));
    assert_eq!(counting.calls(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_deadline_fails_at_once_unsent() {
    let counting = Counting::new();
    let service = ClientRateLimitLayer::new(Limit::global(quota(10, 1))).layer(counting.clone());
    service.clone().oneshot(request(HELLO, None)).await.unwrap();
    let start = Instant::now();
    // The token is 100 ms away; the call has 50 ms.
    let response = service.clone().oneshot(with_timeout("50m")).await.unwrap();
    assert!(rejected(&response));
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "100");
    assert_eq!(start.elapsed(), Duration::ZERO, "failed at once");
    assert_eq!(counting.calls(), 1, "never sent");
    // Exactly as long as the deadline is too late: the call would have no time left.
    let response = service.clone().oneshot(with_timeout("100m")).await.unwrap();
    assert!(rejected(&response));
    // A call with time to spare waits.
    let response = service.clone().oneshot(with_timeout("101m")).await.unwrap();
    assert!(!rejected(&response));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_maximum_fails_at_once() {
    let counting = Counting::new();
    let layer = ClientRateLimitLayer::builder()
        .limit(Limit::global(quota(10, 1)))
        .max_wait(Duration::from_millis(60))
        .build();
    let service = layer.layer(counting.clone());
    service.clone().oneshot(request(HELLO, None)).await.unwrap();
    let start = Instant::now();
    // No deadline, but 100 ms is over the 60 ms maximum; a longer deadline changes nothing.
    for request in [request(HELLO, None), with_timeout("10S")] {
        assert!(rejected(&service.clone().oneshot(request).await.unwrap()));
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(counting.calls(), 1);
    // A zero maximum never waits.
    let layer = ClientRateLimitLayer::builder()
        .limit(Limit::global(quota(10, 1)))
        .max_wait(Duration::ZERO)
        .build();
    let service = layer.layer(counting.clone());
    assert!(!rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
    assert!(rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waited_goes_out_with_what_is_left_of_its_deadline() {
    let counting = Counting::new();
    let service = ClientRateLimitLayer::new(Limit::global(quota(4, 1))).layer(counting.clone());
    service.clone().oneshot(with_timeout("2S")).await.unwrap();
    assert_eq!(
        counting.last_timeout().unwrap(),
        "2S",
        "untouched when it did not wait"
    );
    service.clone().oneshot(with_timeout("2S")).await.unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-timeout", counting.last_timeout().unwrap());
    assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(1750)));
}

#[tokio::test(start_paused = true)]
async fn waiters_recheck_when_they_wake_and_still_respect_their_deadlines() {
    let counting = Counting::new();
    let service = ClientRateLimitLayer::new(Limit::global(quota(10, 1))).layer(counting.clone());
    service.clone().oneshot(request(HELLO, None)).await.unwrap();
    // Both wake at 100 ms; one gets the token, the other's next one (200 ms) is past its
    // 150 ms deadline, so it fails then — unsent.
    let first = tokio::spawn(service.clone().oneshot(with_timeout("150m")));
    let second = tokio::spawn(service.clone().oneshot(with_timeout("150m")));
    let third = tokio::spawn(service.clone().oneshot(with_timeout("1S")));
    settle().await;
    advance(Duration::from_millis(100)).await;
    settle().await;
    let outcomes = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    assert_eq!(outcomes.iter().filter(|r| rejected(r)).count(), 1);
    assert_eq!(counting.calls(), 2);
    // The third waits on to 200 ms.
    let start = Instant::now();
    assert!(!rejected(&third.await.unwrap().unwrap()));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(counting.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn in_shadow_mode_the_client_never_waits() {
    let counting = Counting::new();
    let layer = ClientRateLimitLayer::builder()
        .limit(Limit::global(quota(1, 1)))
        .shadow(true)
        .build();
    let service = layer.layer(counting.clone());
    let start = Instant::now();
    for _ in 0..5 {
        assert!(!rejected(
            &service.clone().oneshot(request(HELLO, None)).await.unwrap()
        ));
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(counting.calls(), 5);
}
