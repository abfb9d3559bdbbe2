//! Which adaptive limit: Envoy's gradient (the controller palisade-limit uses) against
//! Netflix concurrency-limits' Gradient2 and Vegas (written here only to compare), in a
//! deterministic simulation of a backend whose latency climbs once more than K calls are in
//! flight. The gradient must settle within [K/2, 2K] with at least 80 % of the best fixed
//! limit's goodput and a bounded p99; the table it prints is BENCHMARKS.md's.

#![allow(
    dead_code,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

// The backend: `k` workers shared by the calls in flight (processor sharing: each call needs `base` of one worker; with `n > k` in flight, each
// progresses at `k / n`, so latency climbs once more than `k` are in flight), open-loop
// arrivals at `load ×` the backend's capacity, a limiter in front that sheds what is over its
// limit, and callers that give up at a deadline (their calls then count as dropped).

use std::{fmt, time::Duration};

use palisade_limit::adaptive::{Gradient, GradientConfig, Sample};

/// What the simulation measured of one call: palisade's [`Sample`], and whether the call ran
/// out of time (which Vegas reads; Envoy's gradient does not).
#[derive(Clone, Copy, Debug)]
struct Observed {
    rtt: Duration,
    inflight: u32,
    dropped: bool,
}

struct Backend {
    k: u32,
    base: Duration,
}

impl Backend {
    fn new(k: u32, base: Duration) -> Self {
        Self { k, base }
    }
}

enum Limiter {
    Fixed(u32),
    Gradient(Gradient),
    Gradient2(Gradient2),
    Vegas(Vegas),
}

impl Limiter {
    fn gradient2() -> Self {
        Limiter::Gradient2(Gradient2::new(Gradient2Config::default()))
    }

    fn gradient() -> Self {
        Limiter::Gradient(Gradient::new(GradientConfig::default()))
    }

    fn vegas() -> Self {
        Limiter::Vegas(Vegas::new(20, 4, 1000))
    }

    fn limit(&self) -> u32 {
        match self {
            Limiter::Fixed(n) => *n,
            Limiter::Gradient(g) => g.limit(),
            Limiter::Gradient2(g) => g.limit(),
            Limiter::Vegas(v) => v.limit(),
        }
    }

    fn sample(&mut self, now: f64, sample: Observed) {
        match self {
            Limiter::Fixed(_) => {}
            Limiter::Gradient(g) => {
                let sample = Sample {
                    rtt: sample.rtt,
                    inflight: sample.inflight,
                };
                g.on_sample(Duration::from_secs_f64(now), sample);
            }
            Limiter::Gradient2(g) => {
                g.on_sample(sample);
            }
            Limiter::Vegas(v) => {
                v.on_sample(sample);
            }
        }
    }
}

struct Report {
    /// Calls answered within the deadline, per second.
    goodput: f64,
    /// 99th percentile latency of the answered calls, in ms.
    pub p99_ms: f64,
    /// The limit's median over the second half of the run.
    settled_limit: u32,
    /// Shed calls, per second.
    shed: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "goodput {:>8.1}/s  p99 {:>7.1} ms  limit {:>5}  shed {:>8.1}/s",
            self.goodput, self.p99_ms, self.settled_limit, self.shed
        )
    }
}

struct InFlight {
    started: f64,
    work_left: f64,
    inflight_at_start: u32,
}

/// Runs `seconds` of simulated time with `dt` = base / 100 steps.
fn run(backend: &Backend, load: f64, mut limiter: Limiter, seconds: f64, seed: u64) -> Report {
    let base = backend.base.as_secs_f64();
    let k = f64::from(backend.k);
    let capacity = k / base; // calls per second
    let rate = capacity * load;
    let dt = base / 20.0;
    let deadline = 10.0 * base;
    let steps = (seconds / dt) as u64;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let mut flights: Vec<InFlight> = Vec::new();
    let mut answered = 0u64;
    let mut shed = 0u64;
    let mut latencies = Vec::new();
    let mut limits = Vec::new();
    for step in 0..steps {
        let now = step as f64 * dt;
        // Poisson arrivals: at most a few per step at these rates.
        let mut expected = rate * dt;
        while expected > 0.0 {
            let p = expected.min(1.0);
            if next() < p {
                if (flights.len() as u32) < limiter.limit() {
                    flights.push(InFlight {
                        started: now,
                        work_left: base,
                        inflight_at_start: flights.len() as u32 + 1,
                    });
                } else {
                    shed += 1;
                }
            }
            expected -= 1.0;
        }
        let n = flights.len() as f64;
        let speed = if n > k { k / n } else { 1.0 };
        let mut i = 0;
        while i < flights.len() {
            flights[i].work_left -= dt * speed;
            let age = now + dt - flights[i].started;
            if flights[i].work_left <= 0.0 || age >= deadline {
                let done = flights.swap_remove(i);
                let timed_out = done.work_left > 0.0;
                limiter.sample(
                    now,
                    Observed {
                        rtt: Duration::from_secs_f64(age),
                        inflight: done.inflight_at_start,
                        dropped: timed_out,
                    },
                );
                if !timed_out && now > seconds / 2.0 {
                    answered += 1;
                    latencies.push(age);
                }
            } else {
                i += 1;
            }
        }
        if now > seconds / 2.0 && step % 100 == 0 {
            limits.push(limiter.limit());
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    limits.sort();
    let half = seconds / 2.0;
    Report {
        goodput: answered as f64 / half,
        p99_ms: latencies
            .get(latencies.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or(f64::NAN)
            * 1000.0,
        settled_limit: limits.get(limits.len() / 2).copied().unwrap_or(0),
        shed: shed as f64 / seconds,
    }
}

/// Gradient2 (Netflix concurrency-limits' `Gradient2Limit`): the limit follows the ratio of a
/// long-term average latency to the latest window's, so it grows while latency holds and
/// shrinks as soon as a queue forms — without needing a "no load" latency, which drifts.
#[derive(Clone, Debug)]
struct Gradient2 {
    limit: f64,
    min_limit: f64,
    max_limit: f64,
    smoothing: f64,
    tolerance: f64,
    queue_size: f64,
    long_rtt: Ewma,
    window: Window,
}

/// The settings of [`Gradient2`], Netflix's defaults where they have one.
#[derive(Clone, Copy, Debug)]
struct Gradient2Config {
    /// The limit before any sample (default 20).
    initial_limit: u32,
    /// Never below (default 4).
    min_limit: u32,
    /// Never above (default 1000).
    max_limit: u32,
    /// How far each window moves the limit toward its estimate, in (0, 1] (default 0.2).
    smoothing: f64,
    /// How much slower than the long-term latency a window may be before the limit shrinks
    /// (default 1.5).
    tolerance: f64,
    /// Headroom added to the estimate each window, so the limit can grow (default 4).
    queue_size: u32,
    /// Windows averaged by the long-term latency (default 600).
    long_window: u32,
    /// Samples per window (default 10).
    window_samples: u32,
}

impl Default for Gradient2Config {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 4,
            max_limit: 1000,
            smoothing: 0.2,
            tolerance: 1.5,
            queue_size: 4,
            long_window: 600,
            window_samples: 10,
        }
    }
}

impl Gradient2 {
    /// A limit with these settings.
    fn new(config: Gradient2Config) -> Self {
        Self {
            limit: f64::from(config.initial_limit),
            min_limit: f64::from(config.min_limit),
            max_limit: f64::from(config.max_limit),
            smoothing: config.smoothing,
            tolerance: config.tolerance,
            queue_size: f64::from(config.queue_size),
            long_rtt: Ewma::new(config.long_window),
            window: Window::new(config.window_samples),
        }
    }

    /// The limit now.
    fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Takes one sample; at the end of each window the limit moves.
    fn on_sample(&mut self, sample: Observed) -> u32 {
        let Some(window) = self.window.add(sample) else {
            return self.limit();
        };
        let short = window.average_rtt;
        let long = self.long_rtt.add(short);
        // A long-term average far above the latest (a load that went away) comes down faster.
        if long / short > 2.0 {
            self.long_rtt.scale(0.95);
        }
        // Application-limited: too few calls in flight to learn anything about the limit.
        if f64::from(window.max_inflight) < self.limit / 2.0 {
            return self.limit();
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let estimate = self.limit * gradient + self.queue_size;
        let limit = self.limit * (1.0 - self.smoothing) + estimate * self.smoothing;
        self.limit = limit.clamp(self.min_limit, self.max_limit);
        self.limit()
    }
}

/// Vegas (Netflix concurrency-limits' `VegasLimit`, after TCP Vegas): estimates the queue from
/// the ratio of the lowest latency seen to the latest, and moves the limit by a few calls per
/// window to keep that queue small.
#[derive(Clone, Debug)]
struct Vegas {
    limit: f64,
    min_limit: f64,
    max_limit: f64,
    smoothing: f64,
    rtt_noload: Option<f64>,
    windows: u32,
    probe_every: u32,
    window: Window,
}

impl Vegas {
    /// A limit starting at `initial`, between `min` and `max`.
    fn new(initial: u32, min: u32, max: u32) -> Self {
        Self {
            limit: f64::from(initial),
            min_limit: f64::from(min),
            max_limit: f64::from(max),
            smoothing: 1.0,
            rtt_noload: None,
            windows: 0,
            probe_every: 30 * initial.max(1),
            window: Window::new(10),
        }
    }

    /// The limit now.
    fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Takes one sample; at the end of each window the limit moves.
    fn on_sample(&mut self, sample: Observed) -> u32 {
        let Some(window) = self.window.add(sample) else {
            return self.limit();
        };
        self.windows += 1;
        let rtt = window.min_rtt;
        // Now and then the no-load latency is measured again, so it follows a slower backend.
        if self.windows.is_multiple_of(self.probe_every) {
            self.rtt_noload = None;
        }
        let noload = match self.rtt_noload {
            Some(noload) if rtt >= noload => noload,
            _ => {
                self.rtt_noload = Some(rtt);
                return self.limit();
            }
        };
        let log = self.limit.log10().max(1.0);
        let limit = if window.dropped {
            self.limit - log
        } else if f64::from(window.max_inflight) * 2.0 < self.limit {
            return self.limit();
        } else {
            let queue = (self.limit * (1.0 - noload / rtt)).ceil();
            let (alpha, beta) = (3.0 * log, 6.0 * log);
            if queue <= log {
                self.limit + beta
            } else if queue < alpha {
                self.limit + log
            } else if queue > beta {
                self.limit - log
            } else {
                self.limit
            }
        };
        let limit = self.limit * (1.0 - self.smoothing) + limit * self.smoothing;
        self.limit = limit.clamp(self.min_limit, self.max_limit);
        self.limit()
    }
}

/// An exponentially weighted moving average over about `window` values, plain average until
/// then (so the first values are not pulled toward zero).
#[derive(Clone, Debug)]
struct Ewma {
    window: u32,
    count: u32,
    value: f64,
}

impl Ewma {
    fn new(window: u32) -> Self {
        Self {
            window: window.max(1),
            count: 0,
            value: 0.0,
        }
    }

    fn add(&mut self, x: f64) -> f64 {
        if self.count < self.window {
            self.count += 1;
            self.value += (x - self.value) / f64::from(self.count);
        } else {
            let alpha = 2.0 / (f64::from(self.window) + 1.0);
            self.value += alpha * (x - self.value);
        }
        self.value
    }

    fn scale(&mut self, factor: f64) {
        self.value *= factor;
    }
}

/// Samples gathered into windows of `size`.
#[derive(Clone, Debug)]
struct Window {
    size: u32,
    count: u32,
    sum_rtt: f64,
    min_rtt: f64,
    max_inflight: u32,
    dropped: bool,
}

/// What one window saw.
struct Seen {
    average_rtt: f64,
    min_rtt: f64,
    max_inflight: u32,
    dropped: bool,
}

impl Window {
    fn new(size: u32) -> Self {
        Self {
            size: size.max(1),
            count: 0,
            sum_rtt: 0.0,
            min_rtt: f64::INFINITY,
            max_inflight: 0,
            dropped: false,
        }
    }

    fn add(&mut self, sample: Observed) -> Option<Seen> {
        let rtt = sample.rtt.as_secs_f64().max(1e-9);
        self.count += 1;
        self.sum_rtt += rtt;
        self.min_rtt = self.min_rtt.min(rtt);
        self.max_inflight = self.max_inflight.max(sample.inflight);
        self.dropped |= sample.dropped;
        if self.count < self.size {
            return None;
        }
        let seen = Seen {
            average_rtt: self.sum_rtt / f64::from(self.count),
            min_rtt: self.min_rtt,
            max_inflight: self.max_inflight,
            dropped: self.dropped,
        };
        *self = Self::new(self.size);
        Some(seen)
    }
}

#[test]
fn the_gradient_settles_near_the_backends_capacity_with_the_best_goodput() {
    let base = Duration::from_millis(10);
    let mut table = String::from(
        "| K | load | limiter | settled limit | goodput/s | p99 ms |\n|---|---|---|---|---|---|\n",
    );
    for (k, load) in [(20, 1.5), (50, 2.0), (50, 5.0), (200, 2.0)] {
        let backend = Backend::new(k, base);
        let best = [k, 2 * k]
            .into_iter()
            .map(|fixed| run(&backend, load, Limiter::Fixed(fixed), 30.0, 1).goodput)
            .fold(0.0, f64::max);
        let gradient = run(&backend, load, Limiter::gradient(), 30.0, 1);
        for (name, report) in [
            ("gradient (Envoy)", &gradient),
            (
                "gradient2 (Netflix)",
                &run(&backend, load, Limiter::gradient2(), 30.0, 1),
            ),
            (
                "vegas (Netflix)",
                &run(&backend, load, Limiter::vegas(), 30.0, 1),
            ),
        ] {
            table.push_str(&format!(
                "| {k} | {load} | {name} | {} | {:.0} | {:.1} |\n",
                report.settled_limit, report.goodput, report.p99_ms
            ));
        }
        let settled = gradient.settled_limit;
        assert!(
            (k / 2..=2 * k).contains(&settled),
            "K {k}, load {load}: the gradient settled at {settled}"
        );
        assert!(
            gradient.goodput >= 0.8 * best,
            "K {k}, load {load}: goodput {} against the best fixed limit's {best}",
            gradient.goodput
        );
        assert!(
            gradient.p99_ms <= 3.0 * base.as_secs_f64() * 1000.0,
            "K {k}, load {load}: p99 {} ms",
            gradient.p99_ms
        );
    }
    println!("{table}");
}

#[test]
fn below_capacity_the_gradient_limits_nothing() {
    let backend = Backend::new(50, Duration::from_millis(10));
    let unlimited = run(&backend, 0.5, Limiter::Fixed(10_000), 30.0, 1);
    let gradient = run(&backend, 0.5, Limiter::gradient(), 30.0, 1);
    // Only the probes (the limit held at 3 for 50 calls a minute) shed anything.
    assert!(
        gradient.goodput >= 0.99 * unlimited.goodput,
        "{} {}",
        gradient.goodput,
        unlimited.goodput
    );
}
