//! With paused tokio time, exactly `burst + rate × t` calls pass over any window — globally,
//! per key and per method, each independently — through the real layer.

mod common;

use std::time::Duration;

use common::{HELLO, Lcg, STREAM, passes, quota, request};
use palisade_core::{Matcher, PerMethod};
use palisade_demo::frames::unary_service;
use palisade_ratelimit::{Key, Limit, Quota, RateLimitLayer};
use tokio::time::{Instant, advance};
use tonic::Code;
use tower::Layer;

/// What a greedy caller (trying until refused, at every step) gets by time `t` from a full
/// bucket at `t = 0`: `burst + ⌊t / interval⌋`.
fn expected(quota: Quota, elapsed: Duration) -> u64 {
    u64::from(quota.burst().get())
        + (elapsed.as_nanos() / quota.replenish_interval().as_nanos()) as u64
}

/// Checks every window of recorded pass times against `burst + ⌊w / interval⌋`.
fn check_windows(quota: Quota, passes: &[Instant]) {
    let burst = quota.burst().get() as usize;
    let interval = quota.replenish_interval().as_nanos();
    for (i, start) in passes.iter().enumerate() {
        for (j, end) in passes.iter().enumerate().skip(i) {
            let count = j - i + 1;
            let bound = burst + ((*end - *start).as_nanos() / interval) as usize;
            assert!(count <= bound, "{count} calls in {:?}", *end - *start);
        }
    }
}

/// A gap between a greedy caller's steps short enough that its bucket never fills up in
/// between (a full bucket stops counting): under `(burst - 1)` intervals, or, for a burst of
/// one, steps of zero or half an interval (each token is then taken the moment it comes).
fn gap(quota: Quota, lcg: &mut Lcg) -> Duration {
    let interval = quota.replenish_interval().as_nanos() as u64;
    match u64::from(quota.burst().get()) {
        1 => Duration::from_nanos(interval / 2 * lcg.next(2)),
        burst => Duration::from_nanos(lcg.next(interval * (burst - 1))),
    }
}

#[tokio::test(start_paused = true)]
async fn a_global_bucket_passes_exactly_burst_plus_rate_times_t() {
    for (rate, burst) in [(10, 3), (4, 1), (1000, 50), (1, 5), (3, 2)] {
        let quota = quota(rate, burst);
        let mut service = RateLimitLayer::server()
            .limit(Limit::global(quota))
            .build()
            .unwrap()
            .layer(unary_service(Code::Ok));
        let start = Instant::now();
        let mut lcg = Lcg(u64::from(rate));
        let mut times = Vec::new();
        // A greedy caller gets exactly burst + ⌊t / interval⌋.
        for _ in 0..120 {
            while passes(&mut service, request(HELLO, None)).await {
                times.push(Instant::now());
            }
            assert_eq!(
                times.len() as u64,
                expected(quota, start.elapsed()),
                "{rate}/s burst {burst}"
            );
            advance(gap(quota, &mut lcg)).await;
        }
        // Callers coming and going at random: never more than burst + ⌊w / interval⌋ in any
        // window of length w.
        let interval = quota.replenish_interval().as_nanos() as u64;
        for _ in 0..200 {
            advance(Duration::from_nanos(lcg.next(3 * interval))).await;
            for _ in 0..lcg.next(4) {
                if passes(&mut service, request(HELLO, None)).await {
                    times.push(Instant::now());
                }
            }
        }
        check_windows(quota, &times[times.len().saturating_sub(300)..]);
    }
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_exact_bucket() {
    let quota = quota(10, 2);
    let limit = Limit::per_key(Key::metadata("x-api-key"), quota);
    let mut service = RateLimitLayer::server()
        .limit(limit)
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    let start = Instant::now();
    let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
    let mut b_start = None;
    let mut lcg = Lcg(7);
    for step in 0..100 {
        // `a` is greedy from the start; `b` joins at step 30; `c` takes one call every 10th step.
        while passes(&mut service, request(HELLO, Some("a"))).await {
            a += 1;
        }
        if step >= 30 {
            let b_start = *b_start.get_or_insert_with(Instant::now);
            while passes(&mut service, request(HELLO, Some("b"))).await {
                b += 1;
            }
            assert_eq!(b, expected(quota, b_start.elapsed()));
        }
        if step % 10 == 0 {
            assert!(
                passes(&mut service, request(HELLO, Some("c"))).await,
                "c is never over"
            );
            c += 1;
        }
        assert_eq!(a, expected(quota, start.elapsed()), "step {step}");
        advance(gap(quota, &mut lcg)).await;
    }
    assert_eq!(c, 10);
}

#[tokio::test(start_paused = true)]
async fn each_method_has_its_own_exact_bucket_and_quota() {
    let hello = quota(10, 3);
    let stream = quota(4, 2);
    let other = quota(100, 20);
    let quotas = PerMethod::new()
        .rule(Matcher::method(&HELLO[1..]), hello)
        .rule(Matcher::method(&STREAM[1..]), stream)
        .default_value(other);
    let mut service = RateLimitLayer::server()
        .limit(Limit::per_method(quotas))
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    let start = Instant::now();
    let (mut h, mut s, mut x, mut y) = (0, 0, 0, 0);
    let mut lcg = Lcg(11);
    for _ in 0..80 {
        while passes(&mut service, request(STREAM, None)).await {
            s += 1;
        }
        while passes(&mut service, request(HELLO, None)).await {
            h += 1;
        }
        // Two methods under the default rule: each its own bucket of the default quota.
        while passes(&mut service, request("/other.v1.Svc/X", None)).await {
            x += 1;
        }
        while passes(&mut service, request("/other.v1.Svc/Y", None)).await {
            y += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(h, expected(hello, elapsed));
        assert_eq!(s, expected(stream, elapsed));
        assert_eq!(x, expected(other, elapsed));
        assert_eq!(y, expected(other, elapsed));
        // Under every bucket's (burst - 1) intervals: none fills up between steps.
        advance(Duration::from_millis(lcg.next(190))).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_rule_without_split_is_shared_by_the_methods_it_matches() {
    let shared = quota(10, 2);
    let limit =
        Limit::new(PerMethod::new().rule(Matcher::service("palisade.demo.v1.Greeter"), shared));
    let mut service = RateLimitLayer::server()
        .limit(limit)
        .build()
        .unwrap()
        .layer(unary_service(Code::Ok));
    let start = Instant::now();
    let mut total = 0;
    for step in 0..30 {
        let path = if step % 2 == 0 { HELLO } else { STREAM };
        while passes(&mut service, request(path, None)).await {
            total += 1;
        }
        assert_eq!(total, expected(shared, start.elapsed()));
        // A method no rule matches is not limited by this limit.
        for _ in 0..5 {
            assert!(passes(&mut service, request("/other.v1.Svc/X", None)).await);
        }
        advance(Duration::from_millis(70)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn per_key_and_per_method_global_limits_combine_and_a_refused_key_spends_nothing_else() {
    let per_key = quota(10, 2);
    let global = quota(20, 4);
    let layer = RateLimitLayer::server()
        .limit(Limit::per_key(Key::metadata("x-api-key"), per_key))
        .limit(Limit::per_method(global))
        .build()
        .unwrap();
    let mut service = layer.layer(unary_service(Code::Ok));

    // A flood from one key is refused by its own bucket, and leaves the global one alone.
    let mut a = 0;
    for _ in 0..50 {
        if passes(&mut service, request(HELLO, Some("a"))).await {
            a += 1;
        }
    }
    assert_eq!(a, 2);
    // The global bucket of SayHello still has 4 - 2 = 2 tokens: b gets both (its own has 2).
    assert!(passes(&mut service, request(HELLO, Some("b"))).await);
    assert!(passes(&mut service, request(HELLO, Some("b"))).await);
    // c has its own tokens, but SayHello's global bucket is empty now…
    assert!(!passes(&mut service, request(HELLO, Some("c"))).await);
    // …while SayHelloStream's global bucket is its own.
    assert!(passes(&mut service, request(STREAM, Some("c"))).await);

    // Over a long run, with three greedy keys, SayHello's total is the global bucket's exact
    // count and no key gets more than its own.
    let start = Instant::now();
    let (mut total, mut counts) = (0u64, [0u64; 3]);
    for _ in 0..100 {
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            while passes(&mut service, request(HELLO, Some(key))).await {
                counts[i] += 1;
                total += 1;
            }
        }
        let elapsed = start.elapsed();
        assert!(total <= expected(global, elapsed));
        for count in counts {
            assert!(count <= expected(per_key, elapsed));
        }
        advance(Duration::from_millis(37)).await;
        // Three keys at 10/s each want 30/s; the global 20/s binds, exactly (a call refused by
        // the global bucket gives its key's token back, so the keys never run dry).
        assert_eq!(total, expected(global, elapsed) - 4);
    }
}
