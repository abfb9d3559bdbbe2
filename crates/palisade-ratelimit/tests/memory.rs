//! A million distinct keys through a keyed limiter: resident memory stays under the local
//! backend's documented bound (64 bytes per tracked key), and goes back once the keys have
//! been idle for their refill time — dropped by the limiter's own traffic, no cleanup loop.
//!
//! Alone in its test binary, so that no other test moves the process's memory.

mod common;

use std::time::Duration;

use common::{HELLO, passes, quota, request};
use palisade_demo::frames::unary_service;
use palisade_ratelimit::{Key, Limit, RateLimitLayer, backend::Local};
use tonic::Code;
use tower::Layer;

const KEYS: usize = 1_000_000;
/// The backend's documented bound.
const BYTES_PER_KEY: usize = 64;

/// Resident memory, from `/proc/self/status`.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(start_paused = true)]
async fn a_million_keys_stay_bounded_and_go_when_idle() {
    // Room for all of them: shards fill unevenly, and the fullest would start evicting a
    // little before a cap of exactly a million.
    let backend = Local::new().max_keys(KEYS + KEYS / 4);
    // 10 a second, bursts of 10: a key is idle for good after 1 s.
    let quota = quota(10, 10);
    let layer = RateLimitLayer::server()
        .backend(backend.clone())
        .limit(Limit::per_key(
            Key::from_fn(|request| {
                request
                    .headers()
                    .get("x-api-key")
                    .map(|v| v.as_bytes().into())
            }),
            quota,
        ))
        .build()
        .unwrap();
    let mut service = layer.layer(unary_service(Code::Ok));
    // Warm up the allocator and the runtime with the same kind of calls, on a few keys.
    for i in 0..10_000 {
        passes(
            &mut service,
            request(HELLO, Some(&format!("warm-{}", i % 10))),
        )
        .await;
    }
    let baseline = resident_bytes();

    let mut key = String::new();
    for i in 0..KEYS {
        use std::fmt::Write;
        key.clear();
        write!(key, "user-{i:012}").unwrap();
        assert!(passes(&mut service, request(HELLO, Some(&key))).await);
    }
    let tracked = backend.tracked_keys();
    let peak = resident_bytes();
    let grown = peak.saturating_sub(baseline);
    println!(
        "{tracked} keys: resident {} MiB -> {} MiB (+{} bytes per key), tables {} bytes per key",
        baseline >> 20,
        peak >> 20,
        grown / KEYS,
        backend.table_bytes() / tracked,
    );
    assert_eq!(
        tracked,
        KEYS + 10,
        "every key tracked (and the ten warm-up ones)"
    );
    assert!(backend.table_bytes() <= BYTES_PER_KEY * KEYS);
    assert!(
        grown <= BYTES_PER_KEY * KEYS,
        "{grown} bytes for {KEYS} keys"
    );

    // Idle for the refill time (1 s) and a sweep period: then the limiter's own traffic —
    // a few calls landing in each shard — drops them.
    tokio::time::advance(Duration::from_secs(2)).await;
    for i in 0..1000 {
        assert!(passes(&mut service, request(HELLO, Some(&format!("later-{i}")))).await);
    }
    let after = resident_bytes();
    println!(
        "after the idle period: {} keys, resident {} MiB, tables {} bytes",
        backend.tracked_keys(),
        after >> 20,
        backend.table_bytes()
    );
    assert!(backend.tracked_keys() <= 1010, "{}", backend.tracked_keys());
    assert!(backend.table_bytes() < 1 << 20);
    // Back to within a tenth of what the keys took.
    assert!(
        after <= baseline + grown / 10,
        "{after} > {baseline} + {grown} / 10"
    );
}
