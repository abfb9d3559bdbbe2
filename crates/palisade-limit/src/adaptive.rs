//! The adaptive limit's controller: the limit found from the latencies measured, as Envoy's
//! adaptive-concurrency filter finds it ([`Gradient`]). Pure arithmetic over samples (no clock,
//! no I/O), so a simulation drives it deterministically;
//! [`LimitBuilder::adaptive`](crate::LimitBuilder::adaptive) puts it behind a layer.
//!
//! Why this controller: in a simulation of a backend whose latency climbs once more than K
//! calls are in flight (processor sharing over K workers, 10 ms a call), offered 1.5 to 5
//! times what it can serve (`tests/adaptive.rs`), Envoy's gradient settles between 1.3 K and
//! 1.5 K with the goodput of the best fixed limit and a p99 under 1.6 times the no-load
//! latency; Netflix's Vegas settles at 3.3 K to 4.3 K (p99 4 to 7 times the no-load latency),
//! and Gradient2 grows to its maximum until every call times out — both take their reference
//! latency from the load itself, so it drifts up with it; Envoy's is measured again at low
//! concurrency. The figures are in BENCHMARKS.md.
//!
//! ```
//! use std::time::Duration;
//! use palisade_limit::adaptive::{Gradient, GradientConfig, Sample};
//!
//! let mut gradient = Gradient::new(GradientConfig::default());
//! assert_eq!(gradient.limit(), 3, "it starts by measuring the no-load latency");
//! let sample = |ms| Sample { rtt: Duration::from_millis(ms), inflight: 3 };
//! for i in 0..50 {
//!     gradient.on_sample(Duration::from_millis(i), sample(10));
//! }
//! assert_eq!(gradient.limit(), 20, "measured: back to the initial limit");
//! ```

use std::time::Duration;

/// One measured call: how long it took, and how many calls were in flight when it started.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// From admission to the end of the response.
    pub rtt: Duration,
    /// Calls in flight when this one was admitted (itself included).
    pub inflight: u32,
}

/// The gradient controller of Envoy's adaptive-concurrency filter: the limit follows the ratio
/// of the no-load latency to the latest window's, `limit × (min_rtt × (1 + buffer)) / rtt +
/// √limit`; the no-load latency is measured again every `probe_interval` by holding the limit
/// at `min_concurrency` for `probe_samples` calls — so it cannot drift up with the load, which
/// is what makes Netflix's Gradient2 and Vegas creep past the backend's capacity under a
/// steady overload (measured in this crate's simulation, see BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct Gradient {
    config: GradientConfig,
    limit: f64,
    min_rtt: Option<f64>,
    phase: Phase,
    window_rtts: Vec<f64>,
    window_start: Option<Duration>,
    window_inflight: u32,
}

#[derive(Clone, Debug)]
enum Phase {
    /// Measuring the no-load latency: the limit is `min_concurrency` until enough samples.
    Probing { rtts: Vec<f64>, limit_before: f64 },
    /// Adjusting the limit each window, until the next probe at `next_probe`.
    Running { next_probe: Duration },
}

/// The settings of [`Gradient`], Envoy's defaults.
#[derive(Clone, Copy, Debug)]
pub struct GradientConfig {
    /// The limit before the first probe ends (default 20).
    pub initial_limit: u32,
    /// Never above (default 1000).
    pub max_limit: u32,
    /// How much slower than the no-load latency calls may get, as a fraction (default 0.25).
    pub buffer: f64,
    /// How often the limit is recomputed from the window's median latency (default 100 ms).
    pub window: Duration,
    /// How often the no-load latency is measured again (default 60 s).
    pub probe_interval: Duration,
    /// Calls whose median latency is the no-load latency (default 50).
    pub probe_samples: u32,
    /// The limit while probing (default 3).
    pub min_concurrency: u32,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            max_limit: 1000,
            buffer: 0.25,
            window: Duration::from_millis(100),
            probe_interval: Duration::from_secs(60),
            probe_samples: 50,
            min_concurrency: 3,
        }
    }
}

impl Gradient {
    /// A limit with these settings; it starts by probing.
    pub fn new(config: GradientConfig) -> Self {
        let limit = f64::from(config.initial_limit);
        Self {
            config,
            limit,
            min_rtt: None,
            phase: Phase::Probing {
                rtts: Vec::new(),
                limit_before: limit,
            },
            window_rtts: Vec::new(),
            window_start: None,
            window_inflight: 0,
        }
    }

    /// The limit now (while probing, `min_concurrency`).
    pub fn limit(&self) -> u32 {
        match self.phase {
            Phase::Probing { .. } => self.config.min_concurrency,
            // In range: clamped to [min_concurrency, max_limit] at every update.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Phase::Running { .. } => self.limit as u32,
        }
    }

    /// Takes one sample, measured at `now` (any monotonic clock's time since a fixed start).
    pub fn on_sample(&mut self, now: Duration, sample: Sample) -> u32 {
        let rtt = sample.rtt.as_secs_f64();
        match &mut self.phase {
            Phase::Probing { rtts, limit_before } => {
                rtts.push(rtt);
                if rtts.len() >= self.config.probe_samples as usize {
                    self.min_rtt = Some(median(rtts));
                    self.limit = *limit_before;
                    self.phase = Phase::Running {
                        next_probe: now + self.config.probe_interval,
                    };
                    self.window_rtts.clear();
                    self.window_start = Some(now);
                }
            }
            Phase::Running { next_probe } => {
                if now >= *next_probe {
                    self.phase = Phase::Probing {
                        rtts: Vec::new(),
                        limit_before: self.limit,
                    };
                    return self.limit();
                }
                self.window_rtts.push(rtt);
                self.window_inflight = self.window_inflight.max(sample.inflight);
                let start = *self.window_start.get_or_insert(now);
                if now.saturating_sub(start) >= self.config.window {
                    let sample_rtt = median(&mut self.window_rtts);
                    let inflight = f64::from(std::mem::take(&mut self.window_inflight));
                    self.window_rtts.clear();
                    self.window_start = Some(now);
                    let min_rtt = self.min_rtt.unwrap_or(sample_rtt);
                    let gradient =
                        (min_rtt * (1.0 + self.config.buffer) / sample_rtt).clamp(0.5, 2.0);
                    let limit = self.limit * gradient;
                    let mut limit = limit + limit.sqrt();
                    // Application-limited (fewer than half the limit in flight): what the
                    // window measured says nothing about more calls, so the limit does not grow.
                    if inflight < self.limit / 2.0 {
                        limit = limit.min(self.limit);
                    }
                    self.limit = limit.clamp(
                        f64::from(self.config.min_concurrency),
                        f64::from(self.config.max_limit),
                    );
                }
            }
        }
        self.limit()
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
