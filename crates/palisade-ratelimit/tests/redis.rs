//! The Redis backend against real `redis-server` processes (Debian's package; scripts/test
//! installs it), each test starting its own on a free loopback port and killing it at the end.
//!
//! - the script's numbers, key names and expiry, refunds;
//! - three instances sharing one Redis allow one quota within 1 % over a timed window, for a
//!   global limit and for per-key limits (counted on the Redis server's clock);
//! - Redis killed mid-run (fail open onto a local share) and frozen mid-run (fail closed):
//!   every call answered, within the timeout plus scheduling slack, and Redis enforcing again
//!   once it is back;
//! - the `server` example's `--rate-redis` wiring, over real tonic servers.

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Counting, HELLO, passes, quota, request};
use palisade_core::Code;
use palisade_demo::{
    pb::{HelloRequest, greeter_client::GreeterClient},
    spawn,
};
use palisade_ratelimit::{
    Key, Limit, Quota, RateLimitLayer,
    backend::{
        Acquire, BACKEND_UP, Backend, BucketKey, Decision, Fallback, Limiter, LimiterSpec, Origin,
        Redis,
    },
};
use redis_server::RedisServer;
use tonic::transport::Channel;
use tower::Layer;

const ONE: NonZeroU32 = NonZeroU32::MIN;

async fn decide(limiter: &dyn Limiter, key: &BucketKey<'_>) -> Decision {
    match limiter.acquire(key, ONE) {
        Acquire::Ready(decision) => decision,
        Acquire::Pending(future) => future.await,
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

/// Polls `done` (every 10 ms, at most `within`); whether it became true.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn the_script_counts_like_governor_and_keys_expire_when_full() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .build();
    redis.ping().await.unwrap();
    let limiter = redis.limiter(&LimiterSpec::new(per_minute(3), true, "api/0"));
    let key = BucketKey::new(None, Some(b"203.0.113.7"));
    for remaining in [2, 1, 0] {
        let decision = decide(&*limiter, &key).await;
        assert!(decision.is_allowed());
        assert_eq!((decision.limit(), decision.remaining()), (3, remaining));
    }
    let denied = decide(&*limiter, &key).await;
    assert!(!denied.is_allowed());
    // The next token is 20 s away (a third of a minute), the bucket full in 60 s.
    let retry = denied.retry_after();
    assert!(
        retry > Duration::from_secs(19) && retry <= Duration::from_secs(20),
        "{retry:?}"
    );
    assert!(denied.reset_after() <= Duration::from_secs(60));
    // A readable key, which expires when the bucket would be full again.
    let name = "palisade:rl:api/0#203.0.113.7";
    let ttl: i64 = server
        .command(&["PTTL", name])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((59_000..=60_001).contains(&ttl), "{ttl}");

    // A refund gives a token back (in the background).
    let before = server.command(&["GET", name]);
    limiter.refund(&key, ONE, Origin::Primary);
    assert!(
        eventually(Duration::from_secs(5), || server.command(&["GET", name])
            != before)
        .await,
        "the refund reached Redis"
    );
    assert!(decide(&*limiter, &key).await.is_allowed());
    assert!(!decide(&*limiter, &key).await.is_allowed());

    // Other keys are other buckets; long or unprintable keys are hashed; a fast quota's idle
    // key vanishes within its refill time.
    let fast = redis.limiter(&LimiterSpec::new(quota(2, 1), true, "fast/0"));
    let long = vec![b'k'; 100];
    for value in [&b"a"[..], b"b", &long, b"with space"] {
        let key = BucketKey::new(Some(HELLO), Some(value));
        assert!(decide(&*fast, &key).await.is_allowed());
        assert!(!decide(&*fast, &key).await.is_allowed());
    }
    let keys = server.command(&["KEYS", "palisade:rl:fast/0*"]);
    assert_eq!(keys, "*4", "four buckets");
    assert_eq!(
        server.command(&["EXISTS", &format!("palisade:rl:fast/0|{HELLO}#a")]),
        ":1"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            server.command(&["KEYS", "palisade:rl:fast/0*"]) == "*0"
        })
        .await,
        "idle keys expire"
    );
    assert_eq!(redis.stats().fallback, 0);

    // hash_keys: the value never reaches Redis.
    let hashed = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .prefix("h:")
        .hash_keys(true)
        .build();
    let limiter = hashed.limiter(&LimiterSpec::new(per_minute(1), true, "k/0"));
    assert!(
        decide(&*limiter, &BucketKey::new(None, Some(b"secret-key")))
            .await
            .is_allowed()
    );
    assert!(
        !decide(&*limiter, &BucketKey::new(None, Some(b"secret-key")))
            .await
            .is_allowed()
    );
    let keys = server.command(&["KEYS", "h:*"]);
    assert_eq!(keys, "*1");
    assert_eq!(server.command(&["KEYS", "*secret*"]), "*0");
}

#[tokio::test]
async fn combined_limits_on_redis_are_all_or_nothing() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .build();
    let counting = Counting::new();
    let mut service = RateLimitLayer::server()
        .backend(redis.clone())
        .limit(Limit::per_key(Key::metadata("x-api-key"), per_minute(2)).named("key"))
        .limit(Limit::global(per_minute(3)).named("all"))
        .build()
        .unwrap()
        .layer(counting.clone());
    assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    assert!(passes(&mut service, request(HELLO, Some("a"))).await);
    assert!(
        !passes(&mut service, request(HELLO, Some("a"))).await,
        "a's own bucket"
    );
    assert!(passes(&mut service, request(HELLO, Some("b"))).await);
    // The global bucket is empty: b is refused, and its own token goes back: b's bucket,
    // which the refused call emptied (full again in 60 s), has one token again (30 s).
    assert!(!passes(&mut service, request(HELLO, Some("b"))).await);
    let pttl = || -> i64 {
        let reply = server.command(&["PTTL", "palisade:rl:key/0#b"]);
        reply.trim_start_matches(':').parse().unwrap()
    };
    assert!(
        eventually(Duration::from_secs(5), || (0..45_000).contains(&pttl())).await,
        "b's token given back: {}",
        pttl()
    );
    assert_eq!(counting.calls(), 3);
    assert_eq!(redis.stats().fallback, 0);
}

/// Three instances — each its own layer, backend and connection — drive one Redis with
/// bounded concurrency for a timed window; the calls they let through, together, are at most
/// the quota's `burst + rate × t`, `t` from the first to the last script call on the bucket,
/// on the Redis server's clock (as `MONITOR` shows the calls), and within 1 % of what the
/// bucket could give the calls at the times they came (the same, unless the callers stalled).
async fn three_instances(
    keys: &[&str],
    rate: u32,
    burst: u32,
    window: Duration,
    lease: Option<(u32, Duration)>,
) {
    let server = RedisServer::start();
    let limit = |key: bool| {
        let quota = quota(rate, burst);
        let limit = if key {
            Limit::per_key(Key::metadata("x-api-key"), quota)
        } else {
            Limit::global(quota)
        };
        limit.named("shared")
    };
    let mut instances = Vec::new();
    for _ in 0..3 {
        // A generous timeout: this test is about accuracy, and nothing may fall back.
        let mut redis = Redis::open(server.url())
            .unwrap()
            .timeout(Duration::from_secs(2));
        if let Some((batch, max_age)) = lease {
            redis = redis.lease(batch, max_age);
        }
        let redis = redis.build();
        redis.ping().await.unwrap();
        let layer = RateLimitLayer::server()
            .backend(redis.clone())
            .limit(limit(!keys.is_empty()))
            .build()
            .unwrap();
        instances.push((redis, layer));
    }
    // Load the script first, so that every EVALSHA the monitor sees runs it.
    let warm = instances[0]
        .0
        .limiter(&LimiterSpec::new(quota(1, 1), false, "warm/0"));
    assert!(decide(&*warm, &BucketKey::default()).await.is_allowed());

    let keys: Vec<Option<String>> = if keys.is_empty() {
        vec![None]
    } else {
        keys.iter().map(|k| Some((*k).to_owned())).collect()
    };
    let allowed: Arc<Vec<AtomicU64>> = Arc::new(keys.iter().map(|_| AtomicU64::new(0)).collect());
    let calls = Arc::new(AtomicU64::new(0));
    const TASKS: usize = 4;
    let monitor = server.monitor();
    let deadline = tokio::time::Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for (instance, (_, layer)) in instances.iter().enumerate() {
        for task in 0..TASKS {
            let mut service = layer.clone().layer(Counting::new());
            let keys = keys.clone();
            let allowed = allowed.clone();
            let calls = calls.clone();
            tasks.spawn(async move {
                let mut i = instance * TASKS + task;
                // Bounded: at most one call per 2 ms per task, until the deadline.
                while tokio::time::Instant::now() < deadline {
                    let k = i % keys.len();
                    i += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                    if passes(&mut service, request(HELLO, keys[k].as_deref())).await {
                        allowed[k].fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let scripts = monitor.finish(&server);
    let mut round_trips = 0;
    for (redis, _) in &instances {
        let stats = redis.stats();
        assert_eq!(
            (stats.fallback, stats.timeouts, stats.errors),
            (0, 0, 0),
            "every call decided by Redis: {stats:?}"
        );
        round_trips += stats.redis;
    }
    // Without leases, every call is one script call.
    let seen: u64 = scripts.values().map(|s| s.count).sum();
    assert_eq!(
        seen,
        round_trips - 1,
        "the warm-up call was before the monitor"
    );
    if lease.is_none() {
        assert_eq!(seen, calls.load(Ordering::Relaxed));
    }
    // Leases cost up to `instances × (batch − 1)` tokens (leased, never used).
    let leased = lease.map_or(0.0, |(batch, _)| 3.0 * f64::from(batch - 1));
    for (k, key) in keys.iter().enumerate() {
        let name = match key {
            Some(key) => format!("palisade:rl:shared/0#{key}"),
            None => "palisade:rl:shared/0".to_owned(),
        };
        let window = scripts[&name].window();
        let expected = f64::from(burst) + f64::from(rate) * window.as_secs_f64();
        // What the bucket could give the calls as they came: less than `expected` when the
        // callers paused (a shared machine stalls them) with the bucket full.
        let batch = lease.map_or(1, |(batch, _)| batch);
        let could = scripts[&name].tokens_for(rate, burst, batch) as f64;
        let allowed = allowed[k].load(Ordering::Relaxed) as f64;
        assert!(
            allowed <= expected + 1.0 && allowed >= could * 0.99 - leased,
            "{name}: {allowed} allowed, {expected:.1} expected over {window:?}, {could} as the calls came (rate {rate}/s, burst {burst})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_global_quota_within_one_percent() {
    three_instances(&[], 200, 20, Duration::from_secs(3), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_each_keys_quota_within_one_percent() {
    three_instances(
        &["tenant-a", "tenant-b", "tenant-c"],
        100,
        10,
        Duration::from_secs(3),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_leasing_tokens_never_pass_more_than_the_quota() {
    let lease = Some((5, Duration::from_millis(50)));
    three_instances(&[], 200, 20, Duration::from_secs(2), lease).await;
}

#[tokio::test]
async fn leases_cut_round_trips_and_expire() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .lease(4, Duration::from_secs(30))
        .build();
    let limiter = redis.limiter(&LimiterSpec::new(per_minute(10), false, "leased/0"));
    let key = BucketKey::default();
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let decision = decide(&*limiter, &key).await;
        assert!(decision.is_allowed());
        remaining.push(decision.remaining());
    }
    // The tokens left, in Redis and leased here, as without leases.
    assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    // Three round trips (4 + 4 + the last 2), seven calls on leased tokens.
    let stats = redis.stats();
    assert_eq!((stats.redis, stats.leased), (3, 7), "{stats:?}");
    assert!(!decide(&*limiter, &key).await.is_allowed());
    assert_eq!(redis.stats().redis, 4);

    // Unused leased tokens go when the lease is old.
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .lease(4, Duration::from_millis(50))
        .build();
    let limiter = redis.limiter(&LimiterSpec::new(per_minute(100), false, "expiring/0"));
    assert!(decide(&*limiter, &key).await.is_allowed());
    assert!(decide(&*limiter, &key).await.is_allowed());
    assert_eq!((redis.stats().redis, redis.stats().leased), (1, 1));
    // A lease's age is on this process's (Tokio's) clock, not Redis's: move that clock past
    // it, with nothing in flight, rather than sleeping and hoping it passed.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(51)).await;
    tokio::time::resume();
    assert!(decide(&*limiter, &key).await.is_allowed());
    assert_eq!((redis.stats().redis, redis.stats().leased), (2, 1));
}

#[tokio::test]
async fn the_client_layer_waits_for_tokens_from_redis() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_secs(1))
        .build();
    let counting = Counting::new();
    // 20 a second, bursts of 1: each call after the first waits about 50 ms for its token.
    let mut client = RateLimitLayer::client()
        .backend(redis.clone())
        .limit(Limit::global(quota(20, 1)))
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(counting.clone());
    for _ in 0..3 {
        assert!(passes(&mut client, request(HELLO, None)).await);
    }
    assert_eq!(counting.calls(), 3);
    // Each wait asked Redis again: at least the three allowed decisions, and the denials.
    let stats = redis.stats();
    assert!(stats.redis >= 3 && stats.fallback == 0, "{stats:?}");
    // Over the maximum wait: refused at once, unsent.
    let mut strict = RateLimitLayer::client()
        .backend(redis.clone())
        .limit(Limit::global(per_minute(1)).named("strict"))
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap()
        .layer(counting.clone());
    assert!(passes(&mut strict, request(HELLO, None)).await);
    assert!(!passes(&mut strict, request(HELLO, None)).await);
    assert_eq!(counting.calls(), 4);
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        ..Default::default()
    }
}

/// Calls SayHello `n` times; the codes, checking each call is answered within `bound`.
async fn calls(client: &mut GreeterClient<Channel>, n: usize, bound: Duration) -> Vec<tonic::Code> {
    let mut codes = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), client.say_hello(hello()))
            .await
            .expect("the call was answered");
        let took = start.elapsed();
        assert!(took < bound, "a call took {took:?}");
        codes.push(match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        });
    }
    codes
}

fn count(codes: &[tonic::Code], code: tonic::Code) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

/// Calls until a call is decided by Redis again (bounded); the calls it took.
async fn until_back(client: &mut GreeterClient<Channel>, redis: &Redis, bound: Duration) -> usize {
    let before = redis.stats().redis;
    for made in 1..=200 {
        calls(client, 1, bound).await;
        if redis.stats().up && redis.stats().redis > before {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("Redis never decided again: {:?}", redis.stats());
}

/// Answered within the backend's timeout (100 ms here), with scheduling slack for a shared
/// machine; without the timeout, a call on a frozen server would wait for the connection's
/// own (30 s here).
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test]
async fn redis_killed_mid_run_fails_open_onto_the_local_share_then_enforces_again() {
    let mut server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_millis(100))
        .retry_interval(Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(30))
        .fallback(Fallback::local_for_instances(NonZeroU32::new(2).unwrap()))
        .build();
    redis.ping().await.unwrap();
    // 10 a minute, bursts of 10: nothing comes back during the test. The local share: 5.
    let layer = RateLimitLayer::server()
        .backend(redis.clone())
        .limit(Limit::global(per_minute(10)).named("global"))
        .build()
        .unwrap();
    let test_server = spawn(layer).await;
    let mut client = test_server.client().await;

    let up = calls(&mut client, 15, ANSWERED_WITHIN).await;
    assert_eq!(count(&up, tonic::Code::Ok), 10, "{up:?}");
    assert_eq!(count(&up, tonic::Code::ResourceExhausted), 5, "{up:?}");
    assert_eq!(redis.stats().redis, 15);

    server.kill();
    let down = calls(&mut client, 15, ANSWERED_WITHIN).await;
    assert_eq!(
        count(&down, tonic::Code::Ok),
        5,
        "the local share: {down:?}"
    );
    assert_eq!(count(&down, tonic::Code::ResourceExhausted), 10, "{down:?}");
    let stats = redis.stats();
    assert_eq!(stats.fallback, 15, "{stats:?}");
    assert!(!stats.up && stats.trips == 1, "{stats:?}");
    assert!(stats.errors + stats.timeouts >= 3, "{stats:?}");

    server.restart();
    let timeouts = redis.stats().timeouts;
    until_back(&mut client, &redis, ANSWERED_WITHIN).await;
    // The restarted Redis has forgotten the bucket: the probe took one of its 10 tokens (and
    // a probe that timed out may have taken one too, on a slow machine).
    let orphans = (redis.stats().timeouts - timeouts) as usize;
    let back = calls(&mut client, 15, ANSWERED_WITHIN).await;
    let ok = count(&back, tonic::Code::Ok);
    assert!(
        ok <= 9 && ok + orphans >= 9,
        "{back:?}, {orphans} timed out"
    );
    assert_eq!(ok + count(&back, tonic::Code::ResourceExhausted), 15);
    assert_eq!(server.command(&["EXISTS", "palisade:rl:global/0"]), ":1");
    assert!(redis.stats().up);
}

#[tokio::test]
async fn redis_frozen_mid_run_fails_closed_within_the_timeout_then_allows_again() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_millis(100))
        .retry_interval(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(30))
        .fallback(Fallback::Deny)
        .build();
    redis.ping().await.unwrap();
    let layer = RateLimitLayer::server()
        .backend(redis.clone())
        .limit(Limit::global(per_minute(1000)))
        .code(Code::Unavailable)
        .build()
        .unwrap();
    let test_server = spawn(layer).await;
    let mut client = test_server.client().await;
    let up = calls(&mut client, 5, ANSWERED_WITHIN).await;
    assert_eq!(count(&up, tonic::Code::Ok), 5);

    server.pause();
    let frozen = calls(&mut client, 10, ANSWERED_WITHIN).await;
    assert_eq!(count(&frozen, tonic::Code::Unavailable), 10, "{frozen:?}");
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "rate limit exceeded");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "200",
        "retry when the next probe goes"
    );
    let stats = redis.stats();
    assert!(stats.timeouts >= 3 && stats.trips == 1, "{stats:?}");

    server.resume();
    until_back(&mut client, &redis, ANSWERED_WITHIN).await;
    let back = calls(&mut client, 5, ANSWERED_WITHIN).await;
    assert_eq!(count(&back, tonic::Code::Ok), 5, "{back:?}");
}

/// The lead's `server` example wiring, as a test: `--rate`, `--burst`, `--rate-key` and
/// `--rate-redis`; two servers sharing one Redis share one quota.
#[tokio::test]
async fn rate_redis_as_the_server_example_wires_it() {
    /// `--rate-redis URL`: the backend (made inside the runtime; it connects in the background).
    fn redis_backend(url: &str) -> Redis {
        Redis::open(url)
            .expect("--rate-redis: a redis:// URL")
            .build()
    }
    fn layer(
        rate: u32,
        burst: u32,
        rate_key: &str,
        redis: Option<Redis>,
    ) -> Option<RateLimitLayer> {
        let rate = NonZeroU32::new(rate)?;
        let quota =
            Quota::per_second(rate).with_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let limit = match rate_key {
            "global" => Limit::global(quota),
            "peer" => Limit::per_key(Key::peer_ip(), quota),
            other => match other.strip_prefix("metadata:").map(Key::try_metadata) {
                Some(Ok(key)) => Limit::per_key(key, quota),
                _ => panic!("--rate-key: global, peer, subject or metadata:NAME"),
            },
        };
        // Instances share buckets by limit name: name it after the flag.
        let mut builder = RateLimitLayer::server().limit(limit.named(format!("server-{rate_key}")));
        if let Some(redis) = redis {
            builder = builder.backend(redis);
        }
        Some(builder.build().unwrap())
    }

    let server = RedisServer::start();
    let url = server.url();
    assert!(
        layer(0, 1, "global", Some(redis_backend(&url))).is_none(),
        "--rate 0 is off"
    );
    let backends = [redis_backend(&url), redis_backend(&url)];
    // (Only so that no first call here outruns the connection, or the script's loading, and
    // falls back on a loaded machine.)
    for backend in &backends {
        backend.ping().await.unwrap();
    }
    let warm = backends[0].limiter(&LimiterSpec::new(quota(1, 1), false, "warm/0"));
    assert!(decide(&*warm, &BucketKey::default()).await.is_allowed());
    let one =
        spawn(layer(1, 2, "global", Some(backends[0].clone())).expect("--rate 1 is on")).await;
    let two =
        spawn(layer(1, 2, "global", Some(backends[1].clone())).expect("--rate 1 is on")).await;
    let mut clients = [one.client().await, two.client().await];
    let mut passed = 0;
    for i in 0..4 {
        if clients[i % 2].say_hello(hello()).await.is_ok() {
            passed += 1;
        }
    }
    let redis_decided: u64 = backends.iter().map(|b| b.stats().redis).sum();
    let fell_back: u64 = backends.iter().map(|b| b.stats().fallback).sum();
    // Two servers, one bucket of 2 (a token a second comes back: at most one more) — unless
    // a call outran the 5 ms timeout on a loaded machine and its server decided alone.
    assert_eq!(redis_decided + fell_back, 5, "four calls and the warm-up");
    assert!(
        passed >= 2 && passed <= 3 + fell_back as usize,
        "{passed}, {fell_back} fell back"
    );
    assert_eq!(
        server.command(&["EXISTS", "palisade:rl:server-global/0"]),
        ":1"
    );
}

/// The value of the gauge `name` in a snapshot.
fn gauge(snapshotter: &metrics_util::debugging::Snapshotter, name: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Gauge(v) if key.key().name() == name => {
                Some(v.into_inner())
            }
            _ => None,
        })
}

/// Redis frozen until calls go to the fallback; the next call after the retry interval is the
/// probe, and its caller goes away (a `grpc-timeout` shorter than the Redis timeout: tonic
/// drops the future). The probe slot must come back: once Redis is thawed, calls go to it
/// again and `palisade_ratelimit_backend_up` is 1.
#[tokio::test]
async fn a_dropped_probe_gives_its_slot_back_and_calls_return_to_redis() {
    let server = RedisServer::start();
    let (recorder, snapshotter) = common::recorder();
    let redis = metrics::with_local_recorder(&*recorder, || {
        Redis::open(server.url())
            .unwrap()
            .timeout(Duration::from_millis(500))
            .retry_interval(Duration::from_millis(50))
            .trip_after(1)
            .connect_timeout(Duration::from_secs(30))
            .fallback(Fallback::Deny)
            .build()
    });
    redis.ping().await.unwrap();
    let layer = RateLimitLayer::server()
        .backend(redis.clone())
        .limit(Limit::global(per_minute(1000)).named("probe"))
        .build()
        .unwrap();
    let test_server = spawn(layer).await;
    let mut client = test_server.client().await;
    assert_eq!(
        calls(&mut client, 1, ANSWERED_WITHIN).await,
        [tonic::Code::Ok]
    );
    assert_eq!(gauge(&snapshotter, BACKEND_UP), Some(1.0));

    server.pause();
    // One round trip out of time trips the backend (Fallback::Deny: the layer's code).
    let tripped = calls(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(tripped, [tonic::Code::ResourceExhausted]);
    assert!(!redis.stats().up);
    assert_eq!(gauge(&snapshotter, BACKEND_UP), Some(0.0));

    // Calls with a 50 ms deadline until one is the probe: the fallback answers the others at
    // once; the probe waits on the frozen Redis until tonic drops it at its deadline.
    let timeouts = redis.stats().timeouts;
    let mut dropped = false;
    for _ in 0..200 {
        let mut request = tonic::Request::new(hello());
        request.set_timeout(Duration::from_millis(50));
        let result = tokio::time::timeout(Duration::from_secs(10), client.say_hello(request))
            .await
            .expect("the call was answered");
        match result {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                // The fallback's answer: the retry interval is not over yet.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The probe, dropped by tonic's server at the call's deadline — which tonic answers
            // with CANCELLED "Timeout expired", not DEADLINE_EXCEEDED. Any other error is not
            // the dropped probe.
            Err(status) => {
                assert_eq!(
                    (status.code(), status.message()),
                    (tonic::Code::Cancelled, "Timeout expired"),
                    "{status:?}"
                );
                dropped = true;
                break;
            }
            Ok(_) => panic!("Redis is frozen: nothing passes"),
        }
    }
    assert!(dropped, "a probe went, and its call was dropped");
    let stats = redis.stats();
    assert!(!stats.up, "{stats:?}");
    assert_eq!(
        stats.timeouts, timeouts,
        "the probe was dropped before its own Redis timeout: {stats:?}"
    );

    server.resume();
    until_back(&mut client, &redis, ANSWERED_WITHIN).await;
    assert!(redis.stats().up);
    assert_eq!(gauge(&snapshotter, BACKEND_UP), Some(1.0));
    let back = calls(&mut client, 3, ANSWERED_WITHIN).await;
    assert_eq!(count(&back, tonic::Code::Ok), 3, "{back:?}");
}

/// A token taken from the local fallback goes back to the fallback, even when Redis is up
/// again by the time the call is refused; a token taken from Redis would go back to Redis.
///
/// Redis frozen: the first limit's round trip times out and the fallback gives its token;
/// Redis thawed while the second limit's round trip waits: Redis answers it, refusing the
/// call. The first limit's token goes back to the local bucket it came from: Redis's bucket,
/// which lost one token to the timed-out round trip (it still ran), is not given one.
#[tokio::test]
async fn a_fallback_token_is_refunded_to_the_fallback_not_to_redis() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url())
        .unwrap()
        .timeout(Duration::from_millis(300))
        .trip_after(3)
        .connect_timeout(Duration::from_secs(30))
        .build();
    redis.ping().await.unwrap();
    let per_hour = |n| Quota::per_hour(NonZeroU32::new(n).unwrap());
    let one = redis.limiter(&LimiterSpec::new(per_hour(5), false, "one/0"));
    let two = redis.limiter(&LimiterSpec::new(per_hour(1), false, "two/0"));
    // Empty the second limit's Redis bucket (and load the script).
    assert!(decide(&*two, &BucketKey::default()).await.is_allowed());
    let counting = Counting::new();
    let mut service = RateLimitLayer::server()
        .backend(redis.clone())
        .limit(Limit::global(per_hour(5)).named("one"))
        .limit(Limit::global(per_hour(1)).named("two"))
        .build()
        .unwrap()
        .layer(counting.clone());

    // Every script call on the first limit's Redis bucket from now on.
    let monitor = server.monitor();
    server.pause();
    let call = tokio::spawn(async move {
        let response = common::call(&mut service, request(HELLO, None)).await;
        common::rejected(&response)
    });
    // The first limit's round trip timed out: the second's is waiting on the frozen Redis.
    assert!(
        eventually(Duration::from_secs(10), || redis.stats().timeouts == 1).await,
        "{:?}",
        redis.stats()
    );
    server.resume();
    assert!(call.await.unwrap(), "the second limit refused the call");
    let stats = redis.stats();
    assert_eq!((stats.timeouts, stats.fallback), (1, 1), "{stats:?}");
    assert_eq!(counting.calls(), 0);
    // A refund towards Redis (the defect) would be spawned as the call is refused, so it is
    // queued on the runtime — and on the backend's one connection — before this round trip.
    // Redis's bucket: 5, less the timed-out round trip's token, less this one.
    let decision = decide(&*one, &BucketKey::default()).await;
    assert!(decision.is_allowed());
    assert_eq!(decision.remaining(), 3, "no token given to Redis");
    // What Redis ran on that bucket: the timed-out round trip (run once thawed) and this one;
    // no refund.
    let scripts = monitor.finish(&server);
    let on_one: Vec<_> = scripts
        .iter()
        .filter(|(key, _)| key.contains("one/0"))
        .map(|(key, scripts)| (key.as_str(), scripts.count))
        .collect();
    assert_eq!(on_one.len(), 1, "{scripts:?}");
    assert_eq!(on_one[0].1, 2, "{on_one:?}");
}
