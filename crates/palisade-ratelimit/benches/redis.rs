//! The Redis backend's cost per call on loopback, beside the local backend's.
//!
//! Starts its own `redis-server` on a free loopback port (Debian's package; scripts/test
//! installs it); without one, prints why and measures the local cases only.
//!
//! - `ratelimit/backend`: one decision, awaited — `local_direct`, `local_keyed` (1 000 keys in
//!   turn), `redis_direct`, `redis_keyed`, as the floor `redis_ping` (a bare `PING` round trip
//!   on the same kind of connection), and `redis_direct_leased_10` (leasing 10 tokens per
//!   round trip);
//! - `ratelimit/backend_64_in_flight`: 64 decisions in flight at once, time per decision (the
//!   multiplexed connection pipelines them);
//! - `ratelimit/redis_rpc`: one unary RPC through the layer, response polled to its trailers —
//!   `bare` (no layer), `local` (the layer, local backend), `redis` (the layer, Redis backend).
//!
//! Everything runs on one current-thread Tokio runtime; Redis runs in its own process.
#![allow(missing_docs)]

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::{
    future::poll_fn,
    hint::black_box,
    num::NonZeroU32,
    pin::pin,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group};
use futures_util::future::join_all;
use http::{Request, Response};
use http_body::Body;
use palisade_core::Code;
use palisade_demo::{
    SAY_HELLO,
    frames::{GrpcBody, message, unary_service},
};
use palisade_ratelimit::{
    Limit, Quota, RateLimitLayer,
    backend::{Acquire, Backend, BucketKey, Decision, Limiter, LimiterSpec, Local, Redis},
};
use redis_server::RedisServer;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

/// A quota no benchmark exhausts.
fn unlimited() -> Quota {
    Quota::per_second(NonZeroU32::MAX).with_burst(NonZeroU32::MAX)
}

async fn decide(limiter: &dyn Limiter, key: &BucketKey<'_>) -> Decision {
    match limiter.acquire(key, NonZeroU32::MIN) {
        Acquire::Ready(decision) => decision,
        Acquire::Pending(future) => future.await,
    }
}

/// One RPC: call, await the response, poll the body to its end.
async fn rpc<S, B>(service: &mut S, payload: &bytes::Bytes)
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let request = Request::post(SAY_HELLO)
        .body(GrpcBody::new([payload.clone()], None))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none(), "allowed");
    let mut body = pin!(response.into_body());
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        black_box(frame.unwrap());
    }
}

/// Times `iters` runs of `f` on the runtime.
fn timed<F: AsyncFnMut()>(runtime: &Runtime, iters: u64, mut f: F) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

struct Setup {
    runtime: Runtime,
    local: Local,
    redis: Option<(RedisServer, Redis)>,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = if redis_server::available() {
        let server = RedisServer::start();
        let redis = runtime.block_on(async {
            // Generous: a slow round trip is measured, not decided by the fallback.
            let redis = Redis::open(server.url())
                .unwrap()
                .timeout(Duration::from_secs(1))
                .build();
            redis.ping().await.expect("redis-server answers");
            redis
        });
        Some((server, redis))
    } else {
        eprintln!(
            "redis bench: `redis-server` is not on the PATH (scripts/test installs Debian's \
             redis-server package); measuring the local backend only"
        );
        None
    };
    Setup {
        runtime,
        local: Local::new(),
        redis,
    }
}

fn backend(c: &mut Criterion) {
    let setup = setup();
    let runtime = &setup.runtime;
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("api-key-{i:06}").into_bytes())
        .collect();
    let mut group = c.benchmark_group("ratelimit/backend");
    let mut backends: Vec<(&str, &dyn Backend)> = vec![("local", &setup.local)];
    if let Some((_, redis)) = &setup.redis {
        backends.push(("redis", redis));
    }
    for (name, backend) in backends {
        let (direct, keyed) = runtime.block_on(async {
            (
                backend.limiter(&LimiterSpec::new(unlimited(), false, "bench-direct/0")),
                backend.limiter(&LimiterSpec::new(unlimited(), true, "bench-keyed/0")),
            )
        });
        group.bench_function(format!("{name}_direct"), |b| {
            b.iter_custom(|iters| {
                timed(runtime, iters, async || {
                    black_box(decide(&*direct, &BucketKey::default()).await);
                })
            })
        });
        let mut i = 0;
        group.bench_function(format!("{name}_keyed"), |b| {
            b.iter_custom(|iters| {
                timed(runtime, iters, async || {
                    i = (i + 1) % keys.len();
                    let key = BucketKey::new(None, Some(&keys[i]));
                    black_box(decide(&*keyed, &key).await);
                })
            })
        });
    }
    if let Some((server, redis)) = &setup.redis {
        let mut connection = runtime.block_on(async {
            let client = palisade_ratelimit::redis::Client::open(server.url()).unwrap();
            client.get_connection_manager().await.unwrap()
        });
        group.bench_function("redis_ping", |b| {
            b.iter_custom(|iters| {
                timed(runtime, iters, async || {
                    let () = palisade_ratelimit::redis::cmd("PING")
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                })
            })
        });
        // Leasing 10 tokens per round trip: nine calls in ten without one.
        let leased = runtime.block_on(async {
            Redis::open(server.url())
                .unwrap()
                .timeout(Duration::from_secs(1))
                .lease(10, Duration::from_secs(1))
                .build()
                .limiter(&LimiterSpec::new(unlimited(), false, "bench-leased/0"))
        });
        group.bench_function("redis_direct_leased_10", |b| {
            b.iter_custom(|iters| {
                timed(runtime, iters, async || {
                    black_box(decide(&*leased, &BucketKey::default()).await);
                })
            })
        });
        assert_eq!(redis.stats().fallback, 0, "every decision made by Redis");
    }
    group.finish();

    let mut group = c.benchmark_group("ratelimit/backend_64_in_flight");
    let mut backends: Vec<(&str, &dyn Backend)> = vec![("local", &setup.local)];
    if let Some((_, redis)) = &setup.redis {
        backends.push(("redis", redis));
    }
    for (name, backend) in backends {
        let keyed = runtime.block_on(async {
            backend.limiter(&LimiterSpec::new(unlimited(), true, "bench-keyed/0"))
        });
        group.bench_function(format!("{name}_keyed"), |b| {
            b.iter_custom(|iters| {
                let batches = iters.div_ceil(64);
                let elapsed = timed(runtime, batches, async || {
                    let decisions = (0..64).map(|i| {
                        let keyed = &keyed;
                        let key = &keys[i];
                        async move { decide(&**keyed, &BucketKey::new(None, Some(key))).await }
                    });
                    black_box(join_all(decisions).await);
                });
                elapsed.mul_f64(iters as f64 / (batches * 64) as f64)
            })
        });
    }
    group.finish();
}

fn rpc_group(c: &mut Criterion) {
    let setup = setup();
    let runtime = &setup.runtime;
    let payload = message(b"\x0a\x03Ada");
    let mut group = c.benchmark_group("ratelimit/redis_rpc");
    let mut bare = unary_service(Code::Ok);
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| timed(runtime, iters, async || rpc(&mut bare, &payload).await))
    });
    let mut local = RateLimitLayer::server()
        .backend(setup.local.clone())
        .limit(Limit::global(unlimited()))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    group.bench_function("local", |b| {
        b.iter_custom(|iters| timed(runtime, iters, async || rpc(&mut local, &payload).await))
    });
    if let Some((_, redis)) = &setup.redis {
        let mut service = runtime.block_on(async {
            RateLimitLayer::server()
                .backend(redis.clone())
                .limit(Limit::global(unlimited()))
                .build()
                .unwrap()
                .layer(unary_service(Code::Ok))
        });
        group.bench_function("redis", |b| {
            b.iter_custom(|iters| timed(runtime, iters, async || rpc(&mut service, &payload).await))
        });
        assert_eq!(redis.stats().fallback, 0, "every decision made by Redis");
    }
    group.finish();
}

criterion_group!(benches, backend, rpc_group);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
