//! Palisade's criterion benches, and what they share.
//!
//! - `layers`: each layer alone against a bare service doing the same work, server and client
//!   side, in-process ([`suites::layers`]);
//! - `stack`: the full server and client stacks against bare ([`suites::stack`]);
//! - `e2e`: a real tonic server and client over loopback HTTP/2, bare and stacked;
//! - `peers`: the Rust crates doing the same jobs, and their building blocks
//!   ([`suites::peers`]).
//!
//! Every in-process case is one gRPC call through a tower service — its requests built
//! outside the timed part ([`requests::Requests`]), the [`drive::Handler`] behind it reading
//! the request body and answering one message and trailers — polled to its trailers on a no-op
//! waker ([`drive::call_to_trailers`]). After criterion, each bench measures every case's
//! overhead over its group's `bare` interleaved ([`paired`]), which a shared machine's noise
//! cannot skew the way it skews two measurements taken seconds apart. The same cases run a
//! fixed number of times under callgrind (`palisade-bench-count`), for instruction counts that
//! do not depend on the machine's load. `palisade-bench-report` writes `BENCHMARKS.md` and the
//! chart from all three.
//!
//! Run everything with `scripts/bench` (see `BENCHMARKS.md`); one bench with
//! `cargo bench -p palisade-benches --bench layers`. `PALISADE_BENCH_QUICK=1` makes every
//! bench brief (for CI: it proves they build and run, it judges nothing).
#![forbid(unsafe_code)]

pub mod case;
pub mod catalog;
pub mod clock;
pub mod drive;
pub mod env;
pub mod paired;
pub mod requests;
pub mod suites;

pub use drive::call_to_trailers;

use std::{path::PathBuf, time::Duration};

use criterion::Criterion;

/// Whether `PALISADE_BENCH_QUICK` asks for the quick mode.
pub fn quick() -> bool {
    std::env::var_os("PALISADE_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The criterion configuration of the in-process benches: the [`clock::BenchClock`] (thread
/// CPU time unless `PALISADE_BENCH_CLOCK=wall`), 1 s warm-up and 3 s of measurement per case
/// (criterion's defaults are 3 s and 5 s), or, in quick mode, 10 samples in about 0.1 s per
/// case. Command-line options (`--measurement-time`, `--quick`, filters, `--test`) apply on
/// top.
pub fn criterion() -> Criterion<clock::BenchClock> {
    configure(Criterion::default().with_measurement(clock::BenchClock::from_env()))
}

/// Quick mode or the default times, then the command line, for any measurement.
pub fn configure<M: criterion::measurement::Measurement>(criterion: Criterion<M>) -> Criterion<M> {
    let criterion = if quick() {
        criterion
            .warm_up_time(Duration::from_millis(20))
            .measurement_time(Duration::from_millis(100))
            .sample_size(10)
            .nresamples(1000)
    } else {
        criterion
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    criterion.configure_from_args()
}

/// Whether the bench binary measures (`cargo bench` passes `--bench`), rather than tests
/// (`cargo test --benches`) or lists.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a == "--profile-time")
}

/// The positional arguments of a bench binary: criterion's filters.
fn filters() -> Vec<String> {
    const TAKES_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--output-format",
        "--color",
        "--format",
        "--plotting-backend",
    ];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    filters
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Where the benches and the report keep what criterion does not: interleaved overheads,
/// instruction counts, e2e latencies, the machine's load during the run —
/// `PALISADE_BENCH_RESULTS`, else `target/palisade-bench/`.
pub fn results_dir() -> PathBuf {
    std::env::var_os("PALISADE_BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("palisade-bench"))
}

/// Where criterion writes: `CRITERION_HOME`, else `target/criterion/`.
pub fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// Appends `/proc/loadavg` to `target/palisade-bench/load.log` with a label, when measuring,
/// so the report can say how loaded the machine was.
pub fn record_load(label: &str) {
    if !measuring() {
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let line = format!("{now} {label} {}\n", load.trim());
    let _ = std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("load.log"))
            .expect("load.log opens"),
        line.as_bytes(),
    );
}

/// The `main` of the `layers`, `stack` and `peers` benches.
pub fn main_for(bench: &str, groups: fn() -> Vec<case::Group>) {
    env::get();
    let mut criterion = criterion();
    record_load(&format!("{bench}-start"));
    if measuring() {
        let _ = std::fs::write(
            results_dir().join("clock"),
            clock::BenchClock::from_env().describe(),
        );
    }
    case::bench_groups(&mut criterion, groups());
    criterion.final_summary();
    if measuring() {
        // The overheads the report judges: every case against its bare, interleaved (in the
        // groups criterion's filters select, as regular expressions, as criterion reads them).
        let filters: Vec<regex::Regex> = filters()
            .iter()
            .filter_map(|f| regex::Regex::new(f).ok())
            .collect();
        let selected = groups()
            .into_iter()
            .filter(|group| {
                filters.is_empty()
                    || group
                        .ids()
                        .any(|id| filters.iter().any(|f| f.is_match(&id)))
            })
            .collect();
        paired::run(selected);
    }
    record_load(&format!("{bench}-end"));
}
