//! The overhead of each case over its group's `bare`, measured interleaved: round after round
//! (for 2 s per group, at least 101 rounds),
//! every case of a group runs one batch of calls (the same number for each, ≈ 0.3 ms for the
//! slowest), and a case's overhead in a round is its time
//! per call minus bare's in the same round. The median over the rounds is the overhead the
//! report judges.
//!
//! Criterion measures one case at a time, for seconds: between `bare` and the case after it,
//! the machine's neighbours come and go, and the process's heap is not in the same state
//! either (the cases before have allocated and freed their own way). Against a bare call of
//! ≈ 500 ns, that moves a 100 ns overhead by tens of nanoseconds. Interleaving puts both sides
//! of each difference in the same conditions, and the median over the rounds drops the rounds
//! a neighbour disturbed. Criterion's medians stay the report's figure per call.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{case::Group, clock::BenchClock, quick, results_dir};

/// One case's interleaved result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Paired {
    /// Median time per call over the rounds, ns.
    pub per_call_ns: f64,
    /// Median of (this case − bare) per call over the rounds, ns; `None` for `bare` itself.
    pub overhead_ns: Option<f64>,
    /// The 25th and 75th percentiles of that difference, ns.
    pub overhead_iqr_ns: Option<(f64, f64)>,
    /// Rounds measured.
    pub rounds: usize,
    /// Calls per batch.
    pub calls: usize,
}

/// Rounds per group: at least 101 and for at least 2 s (so a neighbour's burst spoils only
/// some of them), or 7 in quick mode.
fn enough(rounds: usize, elapsed: std::time::Duration) -> bool {
    if quick() {
        rounds >= 7
    } else {
        rounds >= 101 && elapsed >= std::time::Duration::from_secs(2)
    }
}

/// Target time of one batch of the group's slowest case. Every case of a group runs the same
/// number of calls per batch, so their requests take the same room in the caches.
const BATCH_NS: f64 = 300_000.0;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

/// Measures every group with a `bare` case interleaved, and merges the results into
/// `target/palisade-bench/paired.json`.
pub fn run(groups: Vec<Group>) {
    let clock = BenchClock::from_env();
    let mut results = BTreeMap::new();
    for group in groups {
        let Some(bare_index) = group.cases.iter().position(|(name, _)| *name == "bare") else {
            continue;
        };
        let mut cases: Vec<_> = group.cases.iter().map(|(_, make)| make()).collect();
        // Calls per batch, from one warm-up batch of each case.
        let slowest = cases
            .iter_mut()
            .map(|case| case.batch(clock, 200))
            .fold(1.0, f64::max);
        let calls = ((BATCH_NS / slowest) as usize).clamp(50, 2_000);
        let mut times = vec![Vec::new(); cases.len()];
        let started = std::time::Instant::now();
        let mut rounds = 0;
        while !enough(rounds, started.elapsed()) {
            // A different case starts each round, so none always follows the same one.
            for k in 0..cases.len() {
                let i = (rounds + k) % cases.len();
                times[i].push(cases[i].batch(clock, calls));
            }
            rounds += 1;
        }
        for (i, (name, _)) in group.cases.iter().enumerate() {
            let (overhead_ns, overhead_iqr_ns) = if i == bare_index {
                (None, None)
            } else {
                let mut differences: Vec<f64> = times[i]
                    .iter()
                    .zip(&times[bare_index])
                    .map(|(t, b)| t - b)
                    .collect();
                differences.sort_by(f64::total_cmp);
                (
                    Some(percentile(&differences, 0.5)),
                    Some((
                        percentile(&differences, 0.25),
                        percentile(&differences, 0.75),
                    )),
                )
            };
            results.insert(
                format!("{}/{name}", group.id),
                Paired {
                    per_call_ns: median(&times[i]),
                    overhead_ns,
                    overhead_iqr_ns,
                    rounds,
                    calls,
                },
            );
        }
        println!("interleaved: {} ({rounds} rounds)", group.id);
    }
    let path = results_dir().join("paired.json");
    let mut all: BTreeMap<String, Paired> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    all.extend(results);
    std::fs::create_dir_all(results_dir()).expect("the results directory");
    std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("JSON"))
        .expect("paired.json is written");
}
