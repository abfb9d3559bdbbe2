//! The rate-limit layer against a bare service doing the same work: one unary RPC, its response
//! body polled to the trailers, with a recorder installed (the counters count). Budgets
//! (docs/ARCHITECTURE.md): ≤ 100 ns median overhead with one direct bucket, ≤ 250 ns keyed.
//!
//! Cases: `direct` (one global bucket), `keyed` (one bucket per `x-api-key`, 1 000 keys in
//! turn), `keyed_and_global` (both on each call), `unlimited_method` (the layer on a method no
//! limit applies to), `client_direct` and `client_keyed` (the client layer, server pushback
//! honoured, nothing held), and, as the floor, governor's own `check` and `check_key` without any
//! layer, the local backend's `acquire`, and the clocks.
//!
//! After criterion's runs, an interleaved measurement prints the overhead and the ratio of
//! each case to the bare service, in one run.
#![allow(missing_docs)]

use std::{
    future::Future,
    hint::black_box,
    num::NonZeroU32,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use governor::RateLimiter;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use palisade_core::{Code, Matcher};
use palisade_demo::{
    SAY_HELLO,
    frames::{GrpcBody, UnaryService, message, unary_service},
};
use palisade_ratelimit::{
    ClientRateLimit, Key, Limit, Quota, RateLimit, RateLimitLayer, TokioClock,
    backend::{Backend, BucketKey, LimiterSpec, Local},
};
use tower::{Layer, Service};

/// A quota no benchmark exhausts.
fn unlimited() -> Quota {
    Quota::per_second(NonZeroU32::MAX).with_burst(NonZeroU32::MAX)
}

/// One RPC: call, resolve the (ready) future, poll the body to its end.
fn rpc<S, B>(service: &mut S, uri: &Uri, payload: &Bytes, key: &HeaderValue)
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header("x-api-key", key.clone())
        .body(GrpcBody::new([payload.clone()], None))
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(response) = pin!(service.call(request)).poll(&mut cx) else {
        unreachable!("the service is ready at once")
    };
    let mut body = pin!(response.unwrap().into_body());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                black_box(frame.unwrap());
            }
            Poll::Ready(None) => break,
            Poll::Pending => unreachable!("the body is ready at once"),
        }
    }
}

struct Cases {
    bare: UnaryService,
    unlimited_method: RateLimit<UnaryService>,
    direct: RateLimit<UnaryService>,
    keyed: RateLimit<UnaryService>,
    keyed_and_global: RateLimit<UnaryService>,
    client_direct: ClientRateLimit<UnaryService>,
    client_keyed: ClientRateLimit<UnaryService>,
}

fn cases() -> Cases {
    let inner = unary_service(Code::Ok);
    let api_key = || Key::metadata("x-api-key");
    Cases {
        bare: inner,
        // A method no limit applies to (as exempt ones): the lookup and the wrapper only.
        unlimited_method: RateLimitLayer::server()
            .limit(Limit::global(unlimited()).only(Matcher::none()))
            .build()
            .unwrap()
            .layer(inner),
        direct: RateLimitLayer::server()
            .limit(Limit::global(unlimited()))
            .build()
            .unwrap()
            .layer(inner),
        keyed: RateLimitLayer::server()
            .limit(Limit::per_key(api_key(), unlimited()))
            .build()
            .unwrap()
            .layer(inner),
        keyed_and_global: RateLimitLayer::server()
            .limit(Limit::per_key(api_key(), unlimited()))
            .limit(Limit::global(unlimited()))
            .build()
            .unwrap()
            .layer(inner),
        client_direct: RateLimitLayer::client()
            .limit(Limit::global(unlimited()))
            .build()
            .unwrap()
            .layer(inner),
        client_keyed: RateLimitLayer::client()
            .limit(Limit::per_key(api_key(), unlimited()))
            .build()
            .unwrap()
            .layer(inner),
    }
}

fn keys() -> Vec<HeaderValue> {
    (0..1000)
        .map(|i| HeaderValue::try_from(format!("api-key-{i:06}")).unwrap())
        .collect()
}

fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        metrics_util::debugging::DebuggingRecorder::new()
            .install()
            .expect("the global recorder installs");
    });
}

fn bench(c: &mut Criterion) {
    install();
    let uri = Uri::from_static(SAY_HELLO);
    let payload = message(b"\x0a\x03Ada");
    let keys = keys();
    let mut cases = cases();
    let mut group = c.benchmark_group("ratelimit/unary");
    let mut run = |name: &str, service: &mut dyn FnMut(&HeaderValue)| {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                service(&keys[i]);
            })
        });
    };
    run("bare", &mut |key| rpc(&mut cases.bare, &uri, &payload, key));
    run("direct", &mut |key| {
        rpc(&mut cases.direct, &uri, &payload, key)
    });
    run("keyed", &mut |key| {
        rpc(&mut cases.keyed, &uri, &payload, key)
    });
    run("keyed_and_global", &mut |key| {
        rpc(&mut cases.keyed_and_global, &uri, &payload, key)
    });
    run("unlimited_method", &mut |key| {
        rpc(&mut cases.unlimited_method, &uri, &payload, key)
    });
    run("client_direct", &mut |key| {
        rpc(&mut cases.client_direct, &uri, &payload, key)
    });
    run("client_keyed", &mut |key| {
        rpc(&mut cases.client_keyed, &uri, &payload, key)
    });
    group.finish();
}

/// The floor: governor's checks alone, with this crate's clock and governor's own.
fn floor(c: &mut Criterion) {
    let quota = unlimited().to_governor();
    let mut group = c.benchmark_group("ratelimit/governor");
    let direct = RateLimiter::direct_with_clock(quota, TokioClock::new());
    group.bench_function("check_tokio_clock", |b| {
        b.iter(|| black_box(direct.check()))
    });
    let direct = RateLimiter::direct(quota);
    group.bench_function("check_monotonic_clock", |b| {
        b.iter(|| black_box(direct.check()))
    });
    let local = Local::new();
    let direct_backend = local.limiter(&LimiterSpec::new(unlimited(), false, "bench"));
    group.bench_function("local_backend_direct_acquire", |b| {
        b.iter(|| black_box(direct_backend.acquire(&BucketKey::default(), NonZeroU32::MIN)))
    });
    let keyed_backend = local.limiter(&LimiterSpec::new(unlimited(), true, "bench"));
    let byte_keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("api-key-{i:06}").into_bytes())
        .collect();
    let mut j = 0;
    group.bench_function("local_backend_keyed_acquire", |b| {
        b.iter(|| {
            j = (j + 1) % byte_keys.len();
            let key = BucketKey::new(None, Some(&byte_keys[j]));
            black_box(keyed_backend.acquire(&key, NonZeroU32::MIN))
        })
    });
    group.bench_function("clock_std_instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    group.bench_function("clock_tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let quanta_clock = quanta::Clock::new();
    group.bench_function("clock_quanta_now", |b| {
        b.iter(|| black_box(quanta_clock.now()))
    });
    let keyed = RateLimiter::keyed(quota);
    let keys: Vec<String> = (0..1000).map(|i| format!("api-key-{i:06}")).collect();
    let mut i = 0;
    group.bench_function("check_key_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(keyed.check_key(&keys[i]))
        })
    });
    group.finish();
}

/// Interleaved batches of each case; the median per-RPC time of each, in nanoseconds.
fn interleaved() {
    install();
    let uri = Uri::from_static(SAY_HELLO);
    let payload = message(b"\x0a\x03Ada");
    let keys = keys();
    let mut cases = cases();
    const BATCH: usize = 20_000;
    const ROUNDS: usize = 31;
    let mut times: [Vec<f64>; 5] = Default::default();
    let batch = |service: &mut dyn FnMut(&HeaderValue)| {
        let start = Instant::now();
        for i in 0..BATCH {
            service(&keys[i % keys.len()]);
        }
        start.elapsed().as_nanos() as f64 / BATCH as f64
    };
    for _ in 0..ROUNDS {
        times[0].push(batch(&mut |key| rpc(&mut cases.bare, &uri, &payload, key)));
        times[1].push(batch(&mut |key| {
            rpc(&mut cases.direct, &uri, &payload, key)
        }));
        times[2].push(batch(&mut |key| rpc(&mut cases.keyed, &uri, &payload, key)));
        times[3].push(batch(&mut |key| {
            rpc(&mut cases.keyed_and_global, &uri, &payload, key)
        }));
        times[4].push(batch(&mut |key| {
            rpc(&mut cases.unlimited_method, &uri, &payload, key)
        }));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = median(&mut times[0]);
    println!(
        "\ninterleaved medians ({ROUNDS} rounds of {BATCH} RPCs), budgets: direct <= 100 ns, keyed <= 250 ns"
    );
    println!("  {:<18} {bare:>8.1} ns", "bare");
    for (name, i) in [
        ("direct", 1),
        ("keyed", 2),
        ("keyed_and_global", 3),
        ("unlimited_method", 4),
    ] {
        let t = median(&mut times[i]);
        println!(
            "  {name:<18} {t:>8.1} ns   overhead {:>6.1} ns   ratio {:.2}",
            t - bare,
            t / bare
        );
    }
}

criterion_group!(benches, bench, floor);

/// `RATELIMIT_BENCH_ONLY=case:iterations`: runs one case that many times and exits, for
/// `perf stat -e cycles:u,instructions:u` (user cycles do not count time the scheduler gives
/// to other processes, which this crate's shared build machine has plenty of).
fn only(spec: &str) {
    install();
    let (case, iterations) = spec.split_once(':').expect("case:iterations");
    let iterations: usize = iterations.parse().expect("a number of iterations");
    let uri = Uri::from_static(SAY_HELLO);
    let payload = message(b"\x0a\x03Ada");
    let keys = keys();
    let mut cases = cases();
    let each = |service: &mut dyn FnMut(&HeaderValue)| {
        for i in 0..iterations {
            service(&keys[i % keys.len()]);
        }
    };
    match case {
        "bare" => each(&mut |key| rpc(&mut cases.bare, &uri, &payload, key)),
        "direct" => each(&mut |key| rpc(&mut cases.direct, &uri, &payload, key)),
        "keyed" => each(&mut |key| rpc(&mut cases.keyed, &uri, &payload, key)),
        "keyed_and_global" => {
            each(&mut |key| rpc(&mut cases.keyed_and_global, &uri, &payload, key))
        }
        "unlimited_method" => {
            each(&mut |key| rpc(&mut cases.unlimited_method, &uri, &payload, key))
        }
        "client_direct" => each(&mut |key| rpc(&mut cases.client_direct, &uri, &payload, key)),
        "client_keyed" => each(&mut |key| rpc(&mut cases.client_keyed, &uri, &payload, key)),
        other => panic!("no case {other}"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("RATELIMIT_BENCH_ONLY") {
        return only(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes `--bench`), and not when profiling or listing.
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    if benching && !args.iter().any(|a| a == "--profile-time" || a == "--list") {
        interleaved();
    }
}
