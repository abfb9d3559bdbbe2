//! The client layer: waits for tokens, never past the call's deadline or the maximum wait.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Counting, Gated, HELLO, per_hour, quota, rejected, request};
use http::HeaderValue;
use palisade_core::{Rpc, Side, deadline::grpc_timeout};
use palisade_demo::pb::{HelloRequest, greeter_client::GreeterClient};
use palisade_ratelimit::{Limit, RateLimitLayer};
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
    let layer = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap();
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
    let service = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
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
    let layer = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .max_wait(Duration::from_millis(60))
        .build()
        .unwrap();
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
    let layer = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let service = layer.layer(counting.clone());
    assert!(!rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
    assert!(rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_names_the_layer_in_the_clients_record_only() {
    let counting = Counting::new();
    let service = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
    service.clone().oneshot(request(HELLO, None)).await.unwrap();
    let recorded = |side| {
        let mut request = with_timeout("50m");
        let record = Rpc::get_or_insert(request.extensions_mut(), side).clone();
        (request, record)
    };
    let (request, record) = recorded(Side::Client);
    assert!(rejected(&service.clone().oneshot(request).await.unwrap()));
    assert_eq!(record.rejected_by(), Some("ratelimit"));
    // A server's record (a proxy forwarding its extensions) is not this call's.
    let (request, record) = recorded(Side::Server);
    assert!(rejected(&service.clone().oneshot(request).await.unwrap()));
    assert_eq!(record.rejected_by(), None);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waited_goes_out_with_what_is_left_of_its_deadline() {
    let counting = Counting::new();
    let service = RateLimitLayer::client()
        .limit(Limit::global(quota(4, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
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
    let service = RateLimitLayer::client()
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
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
    let layer = RateLimitLayer::client()
        .limit(Limit::global(quota(1, 1)))
        .shadow(true)
        .build()
        .unwrap();
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

/// A call whose future is dropped while it waits — on a later limit's backend, or asleep
/// until a later limit's token — gives back the tokens the earlier limits gave it.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_it_waits_gives_its_tokens_back() {
    // Waiting on the backend.
    let gate = Gated::default();
    let counting = Counting::new();
    let service = RateLimitLayer::client()
        .backend(gate.clone())
        .limit(Limit::global(per_hour(1)).named("first"))
        .limit(Limit::global(per_hour(1)).named("gate"))
        .build()
        .unwrap()
        .layer(counting.clone());
    let waiting = service.clone().oneshot(request(HELLO, None));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err()
    );
    gate.open();
    assert!(
        !rejected(&service.clone().oneshot(request(HELLO, None)).await.unwrap()),
        "the first limit's token came back"
    );
    assert_eq!(counting.calls(), 1);

    // Asleep until the second limit's next token, 100 ms away.
    let counting = Counting::new();
    let service = RateLimitLayer::client()
        .limit(Limit::global(per_hour(2)))
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
    assert!(!rejected(
        &service.clone().oneshot(request(HELLO, None)).await.unwrap()
    ));
    let waiting = service.clone().oneshot(request(HELLO, None));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err()
    );
    advance(Duration::from_millis(100)).await;
    assert!(
        !rejected(&service.clone().oneshot(request(HELLO, None)).await.unwrap()),
        "the first limit's second token came back"
    );
    assert_eq!(counting.calls(), 2);
}

/// A real tonic server limited to `quota` (server side), counting the calls that reach it;
/// and a client through a client layer with a wide limit, pushback on or off.
async fn pushback_pair(
    quota: palisade_ratelimit::Quota,
    pushback: bool,
) -> (
    palisade_demo::TestServer,
    Arc<AtomicUsize>,
    GreeterClient<palisade_ratelimit::ClientRateLimit<tonic::transport::Channel>>,
) {
    pushback_pair_with(
        Limit::global(quota),
        Limit::global(common::quota(1000, 1000)),
        pushback,
    )
    .await
}

/// As [`pushback_pair`], with the server's and the client's limits given.
async fn pushback_pair_with(
    server_limit: Limit,
    client_limit: Limit,
    pushback: bool,
) -> (
    palisade_demo::TestServer,
    Arc<AtomicUsize>,
    GreeterClient<palisade_ratelimit::ClientRateLimit<tonic::transport::Channel>>,
) {
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    let server = palisade_demo::spawn(
        tower::ServiceBuilder::new()
            .layer(tower::util::MapRequestLayer::new(
                move |request: http::Request<tonic::body::Body>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    request
                },
            ))
            .layer(
                palisade_ratelimit::RateLimitLayer::server()
                    .limit(server_limit)
                    .build()
                    .unwrap(),
            ),
    )
    .await;
    let channel = server.channel().await;
    let client = RateLimitLayer::client()
        .limit(client_limit)
        .max_wait(Duration::from_secs(5))
        .pushback(pushback)
        .build()
        .unwrap()
        .layer(channel);
    (server, reached, GreeterClient::new(client))
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        ..Default::default()
    }
}

fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The server's `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` asks the caller to slow
/// down: the client's next call of the method waits until the pushback has passed, then goes
/// — and the server has its token by then.
#[tokio::test]
async fn the_client_waits_out_the_servers_pushback() {
    // 5 a second, bursts of 1: the server's next token is at most 200 ms away.
    let (_server, reached, mut client) = pushback_pair(common::quota(5, 1), true).await;
    client.say_hello(hello()).await.unwrap();
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!((1..=200).contains(&pushback_ms(&status)), "{status:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    client
        .say_hello(hello())
        .await
        .expect("sent once the pushback passed");
    assert_eq!(reached.load(Ordering::SeqCst), 3);
}

/// A pushback longer than a call may wait refuses the call locally, unsent, with the
/// limiter's rejection; `pushback(false)` sends it anyway.
#[tokio::test]
async fn a_pushback_longer_than_the_wait_refuses_calls_locally_unless_turned_off() {
    let (_server, reached, mut client) = pushback_pair(common::per_hour(1), true).await;
    client.say_hello(hello()).await.unwrap();
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    // An hour away: capped, and over the 5 s maximum wait.
    let local = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(local.code(), tonic::Code::ResourceExhausted);
    assert_eq!(local.message(), "rate limit exceeded");
    let ms = pushback_ms(&local);
    assert!(ms > 5_000 && ms <= 60_000, "{ms}");
    assert_eq!(reached.load(Ordering::SeqCst), 2, "refused unsent");

    let (_server, reached, mut client) = pushback_pair(common::per_hour(1), false).await;
    client.say_hello(hello()).await.unwrap();
    for _ in 0..2 {
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(reached.load(Ordering::SeqCst), 3, "every call sent");
}

/// A call of SayHello for the API key `key`.
fn hello_for(key: &'static str) -> tonic::Request<HelloRequest> {
    let mut request = tonic::Request::new(hello());
    request.metadata_mut().insert(
        "x-api-key",
        tonic::metadata::MetadataValue::from_static(key),
    );
    request
}

/// With a client limit keyed as the server's (per API key), a pushback holds only the calls of
/// the key it answered: one end user's exhausted quota — a gateway relaying its callers' keys —
/// does not hold anyone else's calls of the method.
#[tokio::test]
async fn a_pushback_holds_only_the_calls_of_the_same_key() {
    let key = || palisade_ratelimit::Key::metadata("x-api-key");
    let (_server, reached, mut client) = pushback_pair_with(
        Limit::per_key(key(), per_hour(1)),
        Limit::per_key(key(), quota(1000, 1000)),
        true,
    )
    .await;
    client.say_hello(hello_for("alice")).await.unwrap();
    let status = client.say_hello(hello_for("alice")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    // Alice's next call is held (an hour, over the maximum wait): refused unsent.
    let local = client.say_hello(hello_for("alice")).await.unwrap_err();
    assert_eq!(local.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reached.load(Ordering::SeqCst), 2, "alice's call is held");
    // Bob's are not: sent, and the server has his token.
    client
        .say_hello(hello_for("bob"))
        .await
        .expect("bob is not held by alice's pushback");
    assert_eq!(reached.load(Ordering::SeqCst), 3);
    let status = client.say_hello(hello_for("bob")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    // Carol, still free, after both holds.
    client.say_hello(hello_for("carol")).await.unwrap();
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    let _ = client.say_hello(hello_for("alice")).await.unwrap_err();
    let _ = client.say_hello(hello_for("bob")).await.unwrap_err();
    assert_eq!(reached.load(Ordering::SeqCst), 5, "both still held");
}

/// With only unkeyed client limits, a pushback holds every call of that method through the
/// layer — and no other method's.
#[tokio::test]
async fn an_unkeyed_hold_covers_the_method_and_no_other() {
    let (_server, reached, mut client) = pushback_pair_with(
        Limit::global(per_hour(1)).only(palisade_core::Matcher::method(common::HELLO)),
        Limit::global(quota(1000, 1000)),
        true,
    )
    .await;
    client.say_hello(hello_for("alice")).await.unwrap();
    let _ = client.say_hello(hello_for("alice")).await.unwrap_err();
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    let _ = client.say_hello(hello_for("bob")).await.unwrap_err();
    assert_eq!(
        reached.load(Ordering::SeqCst),
        2,
        "the method is held for every key"
    );
    let mut stream = client
        .say_hello_stream(hello())
        .await
        .expect("another method is not held")
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(reached.load(Ordering::SeqCst), 3);
}
