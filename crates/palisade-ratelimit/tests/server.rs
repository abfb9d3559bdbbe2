//! The server layer in process: exemptions, shadow mode, keyless calls, counters, headers, and
//! a backend that answers later.

mod common;

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use common::{
    Counters, Counting, Gated, HELLO, STREAM, call, passes, per_hour, quota, recorder, rejected,
    request,
};
use palisade_core::{Matcher, MethodRegistry, Peer};
use palisade_demo::frames::unary_service;
use palisade_ratelimit::{
    ALLOWED_TOTAL, Key, Limit, NoKey, REJECTED_TOTAL, RateLimitHeaders, RateLimitLayer,
    backend::{Acquire, Backend, BucketKey, Limiter, LimiterSpec, Local, Origin},
};
use tokio::time::{Instant, advance};
use tonic::Code;
use tower::{Layer, ServiceExt};

const HEALTH: &str = "/grpc.health.v1.Health/Check";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

#[tokio::test(start_paused = true)]
async fn skip_lets_health_and_reflection_through_and_nothing_is_skipped_by_default() {
    let mut service = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 1)))
        .skip(Matcher::health_and_reflection())
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    assert!(passes(&mut service, request(HELLO, None)).await);
    assert!(!passes(&mut service, request(HELLO, None)).await);
    for _ in 0..10 {
        assert!(passes(&mut service, request(HEALTH, None)).await);
        assert!(passes(&mut service, request(REFLECTION, None)).await);
        assert!(
            passes(
                &mut service,
                request(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    None
                )
            )
            .await
        );
    }
    let mut service = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 1)))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    assert!(passes(&mut service, request(HEALTH, None)).await);
    assert!(!passes(&mut service, request(HEALTH, None)).await);
}

#[tokio::test(start_paused = true)]
async fn only_restricts_a_limit_to_the_calls_it_matches() {
    let limit = Limit::global(quota(1, 1)).only(Matcher::method(&STREAM[1..]));
    let mut service = RateLimitLayer::server()
        .limit(limit)
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    for _ in 0..5 {
        assert!(passes(&mut service, request(HELLO, None)).await);
    }
    assert!(passes(&mut service, request(STREAM, None)).await);
    assert!(!passes(&mut service, request(STREAM, None)).await);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_decides_and_counts_but_never_rejects() {
    let (recorder, snapshotter) = recorder();
    let counting = Counting::new();
    let layer = RateLimitLayer::server()
        .limit(Limit::per_key(Key::metadata("x-api-key"), quota(1, 2)).when_keyless(NoKey::Reject))
        .shadow(true)
        .recorder(recorder)
        // Known methods have their own labels from the first call; see the cardinality tests.
        .registry(
            MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut service = layer.layer(counting.clone());
    for _ in 0..5 {
        assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    }
    assert!(
        passes(&mut service, request(HELLO, None)).await,
        "keyless, would be rejected"
    );
    assert_eq!(counting.calls(), 6);
    let counters = Counters::take(&snapshotter);
    assert_eq!(
        counters.get(ALLOWED_TOTAL, &[("grpc_method", "SayHello")]),
        2
    );
    assert_eq!(
        counters.get(REJECTED_TOTAL, &[("grpc_method", "SayHello")]),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn keyless_calls_share_a_bucket_are_rejected_or_pass_as_configured() {
    let limit =
        |no_key| Limit::per_key(Key::metadata("x-api-key"), quota(1, 1)).when_keyless(no_key);

    let mut shared = RateLimitLayer::server()
        .limit(limit(NoKey::Shared))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    assert!(passes(&mut shared, request(HELLO, None)).await);
    assert!(
        !passes(&mut shared, request(HELLO, None)).await,
        "one bucket for all keyless calls"
    );
    assert!(passes(&mut shared, request(HELLO, Some("a"))).await);

    let counting = Counting::new();
    let mut reject = RateLimitLayer::server()
        .limit(limit(NoKey::Reject))
        .build()
        .unwrap()
        .layer(counting.clone());
    let response = call(&mut reject, request(HELLO, None)).await;
    assert!(rejected(&response));
    // Retrying will not help: gRFC A6's "do not retry".
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "-1");
    assert_eq!(counting.calls(), 0);
    // An empty value is no key either.
    assert!(!passes(&mut reject, request(HELLO, Some(""))).await);
    assert!(passes(&mut reject, request(HELLO, Some("a"))).await);

    let mut unlimited = RateLimitLayer::server()
        .limit(limit(NoKey::Unlimited))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    for _ in 0..5 {
        assert!(passes(&mut unlimited, request(HELLO, None)).await);
    }
    assert!(passes(&mut unlimited, request(HELLO, Some("a"))).await);
    assert!(!passes(&mut unlimited, request(HELLO, Some("a"))).await);
}

#[tokio::test(start_paused = true)]
async fn peers_are_keyed_by_address() {
    let mut service = RateLimitLayer::server()
        .limit(Limit::per_key(Key::peer_ip(), quota(1, 1)))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    let from = |addr: &str| {
        let mut request = request(HELLO, None);
        request
            .extensions_mut()
            .insert(Peer::from_addr(addr.parse().unwrap()));
        request
    };
    assert!(passes(&mut service, from("10.0.0.1:1000")).await);
    // Another port, the same address.
    assert!(!passes(&mut service, from("10.0.0.1:2000")).await);
    assert!(passes(&mut service, from("10.0.0.2:1000")).await);
    // IPv6 by /64.
    assert!(passes(&mut service, from("[2001:db8::1]:1")).await);
    assert!(!passes(&mut service, from("[2001:db8::2]:1")).await);
    assert!(passes(&mut service, from("[2001:db8:0:1::1]:1")).await);
}

#[tokio::test(start_paused = true)]
async fn counters_carry_the_method_labels_and_the_registry_bounds_them() {
    let (recorder, snapshotter) = recorder();
    let registry =
        MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
            .unwrap();
    let layer = RateLimitLayer::server()
        .limit(Limit::per_method(quota(1, 2)))
        .registry(registry)
        .recorder(recorder)
        .build()
        .unwrap();
    let mut service = layer.layer(unary_service(Code::Ok));
    for _ in 0..3 {
        passes(&mut service, request(HELLO, None)).await;
        passes(&mut service, request(STREAM, None)).await;
        // Not in the registry: limited all the same, counted as unknown.
        passes(&mut service, request("/evil.Svc/Random1", None)).await;
        passes(&mut service, request("/evil.Svc/Random2", None)).await;
    }
    let counters = Counters::take(&snapshotter);
    let hello = [
        ("grpc_type", "unary"),
        ("grpc_service", "palisade.demo.v1.Greeter"),
        ("grpc_method", "SayHello"),
        ("grpc_component", "server"),
    ];
    assert_eq!(counters.get(ALLOWED_TOTAL, &hello), 2);
    assert_eq!(counters.get(REJECTED_TOTAL, &hello), 1);
    let stream = [
        ("grpc_type", "server_stream"),
        ("grpc_method", "SayHelloStream"),
    ];
    assert_eq!(counters.get(ALLOWED_TOTAL, &stream), 2);
    let unknown = [
        ("grpc_type", "unknown"),
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
    ];
    // Each unknown method its own bucket (2 + 2 allowed), one label set.
    assert_eq!(counters.get(ALLOWED_TOTAL, &unknown), 4);
    assert_eq!(counters.get(REJECTED_TOTAL, &unknown), 2);
    assert_eq!(
        counters.get(ALLOWED_TOTAL, &[("grpc_service", "evil.Svc")]),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn rejections_can_carry_x_ratelimit_headers() {
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(2, 4)))
        .headers(RateLimitHeaders::OnRejection)
        .build()
        .unwrap();
    let service = layer.layer(unary_service(Code::Ok));
    for _ in 0..4 {
        let response = service.clone().oneshot(request(HELLO, None)).await.unwrap();
        assert!(response.headers().get("x-ratelimit-remaining").is_none());
    }
    advance(Duration::from_millis(100)).await;
    let response = service.clone().oneshot(request(HELLO, None)).await.unwrap();
    assert!(rejected(&response));
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "400");
    assert_eq!(response.headers()["x-ratelimit-limit"], "4");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    // Full again in 0.4 + 3 × 0.5 = 1.9 s: 2 whole seconds.
    assert_eq!(response.headers()["x-ratelimit-reset"], "2");
}

#[tokio::test(start_paused = true)]
async fn keys_of_any_length_cost_the_same_and_are_not_stored() {
    let backend = Local::new();
    let layer = RateLimitLayer::server()
        .backend(backend.clone())
        .limit(Limit::per_key(Key::metadata("x-api-key"), quota(1, 1)))
        .build()
        .unwrap();
    let mut service = layer.layer(unary_service(Code::Ok));
    for i in 0..2000 {
        // 4 KiB keys, differing only at the end.
        let key = format!("{}{i:08}", "k".repeat(4096));
        assert!(passes(&mut service, request(HELLO, Some(&key))).await);
        assert!(!passes(&mut service, request(HELLO, Some(&key))).await);
    }
    assert_eq!(backend.tracked_keys(), 2000);
    // 8 MiB of keys; the table holds 24-byte entries.
    assert!(
        backend.table_bytes() <= 64 * 2000,
        "{}",
        backend.table_bytes()
    );
}

#[tokio::test(start_paused = true)]
async fn the_cap_on_tracked_keys_holds() {
    let backend = Local::new().max_keys(1000);
    let layer = RateLimitLayer::server()
        .backend(backend.clone())
        .limit(Limit::per_key(Key::metadata("x-api-key"), quota(1, 1)))
        .build()
        .unwrap();
    let mut service = layer.layer(unary_service(Code::Ok));
    for i in 0..20_000 {
        passes(&mut service, request(HELLO, Some(&i.to_string()))).await;
        assert!(backend.tracked_keys() <= 1000);
    }
    assert!(backend.tracked_keys() >= 800);
}

/// A backend answering later: the local one's decision, after a few polls.
#[derive(Debug)]
struct Deferred(Local);

#[derive(Debug)]
struct DeferredLimiter(Arc<dyn Limiter>);

impl Backend for Deferred {
    fn limiter(&self, spec: &LimiterSpec) -> Arc<dyn Limiter> {
        Arc::new(DeferredLimiter(self.0.limiter(spec)))
    }
}

impl Limiter for DeferredLimiter {
    fn acquire(&self, key: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire {
        let Acquire::Ready(decision) = self.0.acquire(key, tokens) else {
            unreachable!("the local backend answers at once")
        };
        Acquire::Pending(Box::pin(async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            decision
        }))
    }

    fn refund(&self, key: &BucketKey<'_>, tokens: NonZeroU32, origin: Origin) {
        self.0.refund(key, tokens, origin);
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_answers_later_plugs_into_both_layers() {
    let counting = Counting::new();
    let layer = RateLimitLayer::server()
        .backend(Deferred(Local::new()))
        .limit(Limit::per_key(Key::metadata("x-api-key"), quota(10, 2)))
        .limit(Limit::global(quota(10, 3)))
        .build()
        .unwrap();
    let mut service = layer.layer(counting.clone());
    assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    assert!(
        !passes(&mut service, request(HELLO, Some("a"))).await,
        "a's own bucket"
    );
    assert!(passes(&mut service, request(HELLO, Some("b"))).await);
    // The global bucket is empty: b is refused, and gets its own token back.
    let response = call(&mut service, request(HELLO, Some("b"))).await;
    assert!(rejected(&response));
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "100");
    assert_eq!(counting.calls(), 3);
    advance(Duration::from_millis(100)).await;
    assert!(
        passes(&mut service, request(HELLO, Some("b"))).await,
        "b still had a token"
    );

    // The client layer waits through it too.
    let counting = Counting::new();
    let client = RateLimitLayer::client()
        .backend(Deferred(Local::new()))
        .limit(Limit::global(quota(10, 1)))
        .build()
        .unwrap()
        .layer(counting.clone());
    let start = Instant::now();
    for _ in 0..3 {
        assert!(!rejected(
            &client.clone().oneshot(request(HELLO, None)).await.unwrap()
        ));
    }
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(counting.calls(), 3);
}

/// A call whose future is dropped while a later limit's backend decides (a caller gone, a
/// deadline) gives back the tokens the earlier limits gave it.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_a_later_limit_decides_gives_its_tokens_back() {
    let gate = Gated::default();
    let counting = Counting::new();
    let mut service = RateLimitLayer::server()
        .backend(gate.clone())
        .limit(Limit::global(per_hour(1)).named("first"))
        .limit(Limit::global(per_hour(1)).named("gate"))
        .build()
        .unwrap()
        .layer(counting.clone());
    // The first limit gives its only token; the gate never answers, and the caller goes.
    let waiting = service.clone().oneshot(request(HELLO, None));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .is_err()
    );
    gate.open();
    assert!(
        passes(&mut service, request(HELLO, None)).await,
        "the first limit's token came back"
    );
    assert_eq!(counting.calls(), 1);
}

/// A call refused by its 66th limit gives back the tokens of all 65 before it.
#[tokio::test(start_paused = true)]
async fn refunds_reach_every_limit_past_the_64th() {
    let mut builder = RateLimitLayer::server();
    for _ in 0..65 {
        builder = builder.limit(Limit::global(per_hour(2)));
    }
    let mut service = builder
        .limit(Limit::per_key(Key::metadata("x-api-key"), per_hour(1)))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    assert!(
        !passes(&mut service, request(HELLO, Some("a"))).await,
        "a's own bucket"
    );
    // Each global bucket has its second token again, the 65th's too.
    assert!(passes(&mut service, request(HELLO, Some("b"))).await);
    assert!(!passes(&mut service, request(HELLO, Some("c"))).await);
}

/// Every builder that registers `metrics` handles at build says once, at build, that no
/// recorder is installed (this binary installs none), and nothing with a recorder.
#[tokio::test]
async fn building_before_any_recorder_is_installed_warns_once_per_build() {
    fn warnings_during(f: impl FnOnce()) -> String {
        palisade_demo::capture::warnings_during(f).1
    }
    const WARNING: &str = "no `metrics` recorder";
    let text = warnings_during(|| {
        let _ = RateLimitLayer::server()
            .limit(Limit::global(per_hour(1)))
            .build()
            .unwrap();
    });
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    assert!(
        text.contains("WARN") && text.contains(".recorder("),
        "{text}"
    );
    let text = warnings_during(|| {
        let _ = palisade_ratelimit::RateLimitLayer::client()
            .limit(Limit::global(per_hour(1)))
            .build()
            .unwrap();
    });
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    #[cfg(feature = "redis")]
    {
        let text = warnings_during(|| {
            let _ = palisade_ratelimit::backend::Redis::open("redis://127.0.0.1:1")
                .unwrap()
                .build();
        });
        assert_eq!(text.matches(WARNING).count(), 1, "{text}");
        assert!(text.contains("Redis backend"), "{text}");
    }
    // With a recorder, thread-local here, no warning.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let text = warnings_during(|| {
        metrics::with_local_recorder(&recorder, || {
            let _ = RateLimitLayer::server()
                .limit(Limit::global(per_hour(1)))
                .build()
                .unwrap();
        })
    });
    assert!(!text.contains(WARNING), "{text}");
}

/// `RateLimitLayer::disabled()`: every call passes, nothing is registered or described with
/// the recorder of the moment.
#[tokio::test(start_paused = true)]
async fn a_disabled_layer_lets_every_call_through_and_registers_nothing() {
    let (recorder, snapshotter) = recorder();
    let layer = metrics::with_local_recorder(&*recorder, RateLimitLayer::disabled);
    assert!(layer.is_disabled());
    let mut service = layer.layer(unary_service(Code::Ok));
    for _ in 0..1000 {
        assert!(passes(&mut service, request(HELLO, None)).await);
    }
    assert!(snapshotter.snapshot().into_vec().is_empty());
}
