//! What the in-process benches time: the bench thread's CPU time by default.
//!
//! Every in-process case is a single-threaded loop that never blocks (the span exporter, the
//! log writer and the recorder all work on the calling thread), so on an idle machine its CPU
//! time is its wall-clock time. On a shared machine the scheduler hands the core to other
//! processes in the middle of a sample, and wall-clock medians swing by tens of percent; the
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) does not count those slices. What remains of
//! the neighbours — caches and the frequency they share — still shows, which is why the report
//! adds callgrind's instruction counts.
//!
//! `PALISADE_BENCH_CLOCK=wall` measures wall-clock time instead (criterion's default).

use std::time::{Duration, Instant};

use cpu_time::ThreadTime;
use criterion::{
    Throughput,
    measurement::{Measurement, ValueFormatter},
};

/// Which clock: see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchClock {
    /// The bench thread's CPU time.
    ThreadCpu,
    /// Wall-clock time.
    Wall,
}

impl BenchClock {
    /// `PALISADE_BENCH_CLOCK=wall` or `cpu` (the default).
    pub fn from_env() -> Self {
        match std::env::var("PALISADE_BENCH_CLOCK").as_deref() {
            Ok("wall") => Self::Wall,
            _ => Self::ThreadCpu,
        }
    }

    /// `thread CPU time` or `wall-clock time`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ThreadCpu => "thread CPU time",
            Self::Wall => "wall-clock time",
        }
    }
}

/// A started measurement.
#[derive(Debug)]
pub enum Started {
    /// On the thread's CPU clock.
    ThreadCpu(ThreadTime),
    /// On the monotonic clock.
    Wall(Instant),
}

impl Measurement for BenchClock {
    type Intermediate = Started;
    type Value = Duration;

    fn start(&self) -> Started {
        match self {
            Self::ThreadCpu => Started::ThreadCpu(ThreadTime::now()),
            Self::Wall => Started::Wall(Instant::now()),
        }
    }

    fn end(&self, started: Started) -> Duration {
        match started {
            Started::ThreadCpu(t) => t.elapsed(),
            Started::Wall(t) => t.elapsed(),
        }
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanoseconds
    }
}

/// Formats nanoseconds as criterion's wall-clock formatter does.
struct Nanoseconds;

impl ValueFormatter for Nanoseconds {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_iteration = match *throughput {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n)
            | Throughput::ElementsAndBytes { elements: n, .. } => n as f64,
        };
        let _ = typical;
        values
            .iter_mut()
            .for_each(|v| *v = per_iteration * 1e9 / *v);
        "elem/s"
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}
