//! Writes `BENCHMARKS.md` and `benches/overhead.svg` from what the benches measured:
//! criterion's estimates (`target/criterion/**/new/{benchmark,estimates}.json`), callgrind's
//! instruction counts (`target/palisade-bench/instructions.json`, from
//! `palisade-bench-count --callgrind`), the end-to-end latencies
//! (`target/palisade-bench/e2e.json`) and the machine's load during the run
//! (`target/palisade-bench/load.log`).
//!
//! ```text
//! palisade-bench-report [--out BENCHMARKS.md] [--svg benches/overhead.svg]
//! ```
//!
//! Every figure is a median per call. A case's overhead is its median minus the median of
//! the `bare` case of its group (the same handler and requests without the layer, measured
//! just before it); its instruction overhead is the same difference in callgrind's counts.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use palisade_benches::{
    catalog::{BUDGETS, Budget, E2E_BUDGET, PAIRS, PairKind, baseline},
    criterion_dir, results_dir, suites,
};
use serde::Deserialize;

/// One criterion result.
#[derive(Clone, Debug)]
struct Estimate {
    /// Median time per iteration, ns.
    median: f64,
    /// 95 % confidence interval of the median, ns.
    low: f64,
    high: f64,
}

#[derive(Deserialize)]
struct BenchmarkJson {
    full_id: String,
}

#[derive(Deserialize)]
struct EstimatesJson {
    median: Statistic,
}

#[derive(Deserialize)]
struct Statistic {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Debug, Default, Deserialize)]
struct Counts {
    #[serde(default)]
    valgrind: String,
    #[serde(default)]
    cases: BTreeMap<String, Count>,
}

#[derive(Debug, Deserialize)]
struct Count {
    instructions_per_call: f64,
}

#[derive(Debug, Deserialize)]
struct Paired {
    per_call_ns: f64,
    overhead_ns: Option<f64>,
    overhead_iqr_ns: Option<(f64, f64)>,
    rounds: usize,
}

#[derive(Debug, Deserialize)]
struct Latency {
    calls: usize,
    p50_us: u32,
    p90_us: u32,
    p99_us: u32,
}

/// Everything the report reads.
#[derive(Debug, Default)]
struct Results {
    estimates: BTreeMap<String, Estimate>,
    instructions: BTreeMap<String, f64>,
    valgrind: String,
    latencies: BTreeMap<String, Latency>,
    load: Vec<String>,
    /// What the in-process benches timed (`clock::BenchClock::describe`).
    clock: String,
    /// The interleaved overheads (`palisade_benches::paired`).
    paired: BTreeMap<String, Paired>,
    /// The h2load runs against the release `server` (`scripts/bench`'s last step).
    h2load: Vec<H2loadRun>,
}

/// One h2load run: `NAME calls/s=N log_lines=N load=L1 L5 L15`, a line of `h2load.txt`.
#[derive(Clone, Debug, PartialEq)]
struct H2loadRun {
    name: String,
    calls_per_s: f64,
    log_lines: Option<u64>,
    load: String,
}

impl H2loadRun {
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let name = words.next()?.to_owned();
        let mut run = H2loadRun {
            name,
            calls_per_s: 0.0,
            log_lines: None,
            load: String::new(),
        };
        let mut load = Vec::new();
        for word in words {
            if let Some(v) = word.strip_prefix("calls/s=") {
                run.calls_per_s = v.parse().ok()?;
            } else if let Some(v) = word.strip_prefix("log_lines=") {
                run.log_lines = v.parse().ok();
            } else if let Some(v) = word.strip_prefix("load=") {
                load.push(v);
            } else if !word.contains('=') && !load.is_empty() {
                load.push(word);
            }
        }
        run.load = load.join(" ");
        (run.calls_per_s > 0.0).then_some(run)
    }
}

/// The h2load runs as rounds: the n-th run of each variant is in round n.
fn h2load_rounds(runs: &[H2loadRun]) -> Vec<BTreeMap<&str, &H2loadRun>> {
    let mut rounds: Vec<BTreeMap<&str, &H2loadRun>> = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for run in runs {
        let n = seen.entry(&run.name).or_default();
        if rounds.len() <= *n {
            rounds.push(BTreeMap::new());
        }
        rounds[*n].insert(&run.name, run);
        *n += 1;
    }
    rounds
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The median over the rounds of `name`'s calls/s over `bare`'s in the same round.
fn h2load_ratio(rounds: &[BTreeMap<&str, &H2loadRun>], name: &str) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter_map(|r| Some(r.get(name)?.calls_per_s / r.get("bare")?.calls_per_s))
            .collect(),
    )
}

/// The mark after which BENCHMARKS.md is written by hand and kept by every rerun.
const KEPT: &str = "<!-- Written by hand below this line; palisade-bench-report keeps it. -->";

impl Results {
    fn load(criterion: &Path, results: &Path) -> Self {
        let mut estimates = BTreeMap::new();
        collect_estimates(criterion, &mut estimates);
        let counts: Counts = read_json(&results.join("instructions.json")).unwrap_or_default();
        let latencies = read_json(&results.join("e2e.json")).unwrap_or_default();
        let load = std::fs::read_to_string(results.join("load.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        Results {
            estimates,
            instructions: counts
                .cases
                .into_iter()
                .map(|(id, count)| (id, count.instructions_per_call))
                .collect(),
            valgrind: counts.valgrind,
            latencies,
            load,
            clock: std::fs::read_to_string(results.join("clock"))
                .unwrap_or_else(|_| "thread CPU time".into()),
            paired: read_json(&results.join("paired.json")).unwrap_or_default(),
            h2load: std::fs::read_to_string(results.join("h2load.txt"))
                .unwrap_or_default()
                .lines()
                .filter_map(H2loadRun::parse)
                .collect(),
        }
    }

    fn median(&self, id: &str) -> Option<f64> {
        self.estimates.get(id).map(|e| e.median)
    }

    /// (median, overhead over the group's bare), ns: the interleaved overhead when there is
    /// one, else the difference of criterion's medians.
    fn overhead(&self, id: &str) -> Option<(f64, f64)> {
        let median = self
            .median(id)
            .or_else(|| self.paired.get(id).map(|p| p.per_call_ns))?;
        if let Some(overhead) = self.paired.get(id).and_then(|p| p.overhead_ns) {
            return Some((median, overhead));
        }
        let bare = self.median(&baseline(id))?;
        Some((median, median - bare))
    }

    /// The interleaved overhead's interquartile range, ns.
    fn overhead_iqr(&self, id: &str) -> Option<(f64, f64)> {
        self.paired.get(id).and_then(|p| p.overhead_iqr_ns)
    }

    /// A case's time per call over its bare's, from the interleaved rounds when measured.
    fn ratio(&self, id: &str) -> Option<f64> {
        match (self.paired.get(id), self.paired.get(&baseline(id))) {
            (Some(case), Some(bare)) if bare.per_call_ns > 0.0 => {
                Some(case.per_call_ns / bare.per_call_ns)
            }
            _ => Some(self.median(id)? / self.median(&baseline(id))?),
        }
    }

    fn instructions(&self, id: &str) -> Option<f64> {
        self.instructions.get(id).copied()
    }

    fn instruction_overhead(&self, id: &str) -> Option<f64> {
        Some(self.instructions(id)? - self.instructions(&baseline(id))?)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every `new/` result under criterion's directory.
fn collect_estimates(dir: &Path, into: &mut BTreeMap<String, Estimate>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let benchmark: Option<BenchmarkJson> = read_json(&path.join("benchmark.json"));
            let estimates: Option<EstimatesJson> = read_json(&path.join("estimates.json"));
            if let (Some(benchmark), Some(estimates)) = (benchmark, estimates) {
                into.insert(
                    benchmark.full_id,
                    Estimate {
                        median: estimates.median.point_estimate,
                        low: estimates.median.confidence_interval.lower_bound,
                        high: estimates.median.confidence_interval.upper_bound,
                    },
                );
            }
        } else if path
            .file_name()
            .is_some_and(|n| n != "base" && n != "report")
        {
            collect_estimates(&path, into);
        }
    }
}

/// `123 ns`, `1.23 µs`, `12.3 ms`.
fn ns(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude < 1_000.0 {
        format!("{value:.0} ns")
    } else if magnitude < 1_000_000.0 {
        format!("{:.2} µs", value / 1_000.0)
    } else {
        format!("{:.2} ms", value / 1_000_000.0)
    }
}

fn signed_ns(value: f64) -> String {
    if value >= 0.0 {
        format!("+{}", ns(value))
    } else {
        format!("−{}", ns(-value))
    }
}

fn instructions(value: f64) -> String {
    format!("{value:.0}")
}

fn signed_instructions(value: f64) -> String {
    if value >= 0.0 {
        format!("+{value:.0}")
    } else {
        format!("−{:.0}", -value)
    }
}

fn opt<T>(value: Option<T>, f: impl Fn(T) -> String) -> String {
    value.map(f).unwrap_or_else(|| "—".to_owned())
}

/// The machine and the toolchain.
struct Machine {
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    rustc: String,
    commit: String,
    date: String,
}

impl Machine {
    fn probe(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let mhz = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("cpu MHz"))
            .and_then(|v| {
                v.trim_start_matches([' ', '\t', ':'])
                    .trim()
                    .parse::<f64>()
                    .ok()
            });
        let cpu = match mhz {
            Some(mhz) => format!("{cpu}, {:.2} GHz", mhz / 1000.0),
            None => cpu,
        };
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(root)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        Machine {
            cpu,
            cores,
            memory,
            kernel,
            rustc: run("rustc", &["--version"]),
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
            date: today(),
        }
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A budget line measured.
struct Judged<'a> {
    budget: &'a Budget,
    overhead: Option<f64>,
    ir_overhead: Option<f64>,
    /// The instruction overhead converted to ns at the bare case's measured ns per instruction.
    estimate: Option<f64>,
}

impl Judged<'_> {
    fn met(&self) -> Option<bool> {
        self.overhead.map(|o| o <= self.budget.limit_ns)
    }
}

fn judge<'a>(results: &Results, budget: &'a Budget) -> Judged<'a> {
    let overhead = results.overhead(budget.case).map(|(_, o)| o);
    let ir_overhead = results.instruction_overhead(budget.case);
    let bare = baseline(budget.case);
    let estimate = match (
        ir_overhead,
        results.median(&bare),
        results.instructions(&bare),
    ) {
        (Some(ir), Some(ns), Some(bare_ir)) if bare_ir > 0.0 => Some(ir * ns / bare_ir),
        _ => None,
    };
    Judged {
        budget,
        overhead,
        ir_overhead,
        estimate,
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✅ met",
        Some(false) => "❌ missed",
        None => "not measured",
    }
}

fn write_report(results: &Results, machine: &Machine, svg_name: &str) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Palisade benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `palisade-bench-report` from the last `scripts/bench` run; do not edit by hand.\n"
    );
    let _ = writeln!(
        w,
        "Every figure is a **median per call**. In-process cases make one unary gRPC call through \
         a tower service — a realistic request (`authorization` bearer token, `traceparent`, \
         tonic's connection info, one request message) built outside the timed part, a handler \
         that reads the request body and answers one message and trailers — and poll the \
         response body to its trailers. The **median** per call is criterion's. A case's \
         **overhead** is measured against the `bare` case of its group — the same handler and \
         requests with no layer — *interleaved*: rounds (at least 101, for at least 2 s per group; {} rounds at most) in \
         which every case of the group runs one batch of the same number of calls (≈ 0.3 ms for \
         its slowest case), the overhead being the median over the rounds of \
         (case − bare) in the same round, with its interquartile range; so both sides of every \
         difference share the machine's and the heap's state, which criterion's one-case-after-\
         another cannot give on a shared machine. In-process times are the bench thread's **{}** \
         (the loops are single-threaded and never block, so on an idle machine that is their \
         wall-clock time; on a shared one it leaves out the time the scheduler gives to other \
         processes). **Instructions** are callgrind's counts for 1 000 calls after 1 100 warm-up \
         calls, per call: they do not depend on the machine's load, and the overhead in \
         instructions is the same difference. \"≈ ns\" converts that instruction overhead to \
         time at the bare case's measured time per instruction — an estimate that load cannot \
         skew. End-to-end figures are wall-clock.\n",
        results
            .paired
            .values()
            .map(|p| p.rounds)
            .max()
            .map_or_else(|| "no".to_owned(), |r| r.to_string()),
        results.clock.trim()
    );

    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(
        w,
        "| CPU | {} ({} logical cores) |",
        machine.cpu, machine.cores
    );
    let _ = writeln!(w, "| memory | {} |", machine.memory);
    let _ = writeln!(w, "| kernel | Linux {} |", machine.kernel);
    let _ = writeln!(w, "| toolchain | {} |", machine.rustc);
    let _ = writeln!(w, "| commit | {} |", machine.commit);
    let _ = writeln!(w, "| date | {} |", machine.date);
    if !results.valgrind.is_empty() {
        let _ = writeln!(
            w,
            "| instruction counts | {} (callgrind) |",
            results.valgrind
        );
    }
    if !results.load.is_empty() {
        let _ = writeln!(
            w,
            "\nLoad average (1, 5, 15 min) when each bench started and ended — the machine is shared, so wall-clock figures carry its noise:\n"
        );
        let _ = writeln!(w, "| when | load |\n|---|---|");
        for line in &results.load {
            let mut parts = line.split_whitespace();
            let (_time, label) = (parts.next(), parts.next().unwrap_or(""));
            let load: Vec<&str> = parts.take(3).collect();
            let _ = writeln!(w, "| {label} | {} |", load.join(" "));
        }
    }
    let _ = writeln!(w);

    // Budgets.
    let judged: Vec<Judged<'_>> = BUDGETS.iter().map(|b| judge(results, b)).collect();
    let _ = writeln!(w, "## Budgets (docs/ARCHITECTURE.md)\n");
    let _ = writeln!(w, "![overhead per layer]({svg_name})\n");
    let _ = writeln!(
        w,
        "| what | side | overhead | instructions | ≈ ns | budget | verdict |\n|---|---|---:|---:|---:|---:|---|"
    );
    for j in &judged {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | ≤ {} | {} |",
            j.budget.what,
            j.budget.side,
            opt(j.overhead, signed_ns),
            opt(j.ir_overhead, signed_instructions),
            opt(j.estimate, signed_ns),
            ns(j.budget.limit_ns),
            verdict(j.met())
        );
    }
    let e2e = e2e_ratio(results);
    let _ = writeln!(
        w,
        "| end to end over loopback, unary, 64 in flight | server + client | {} of bare tonic's throughput (server stack alone: {}) | | | ≥ {:.0} % | {} |",
        opt(e2e, |r| format!("{:.1} %", r * 100.0)),
        opt(
            results
                .median("e2e/unary_64/bare")
                .zip(results.median("e2e/unary_64/server_stack")),
            |(b, s)| format!("{:.1} %", b / s * 100.0)
        ),
        E2E_BUDGET.min_ratio * 100.0,
        verdict(e2e.map(|r| r >= E2E_BUDGET.min_ratio))
    );
    let peers_judged: Vec<(&palisade_benches::catalog::Pair, Option<f64>)> = PAIRS
        .iter()
        .filter(|p| p.kind == PairKind::Peer && p.same_job)
        .map(|p| (p, pair_ratio(results, p)))
        .collect();
    let peers_met = peers_judged
        .iter()
        .filter_map(|(_, r)| r.map(|r| r <= 1.0))
        .collect::<Vec<_>>();
    let _ = writeln!(
        w,
        "| each layer against the Rust crate doing the same job | server | {} of {} comparisons at ratio ≤ 1.0 (see Peers) | | | ≤ 1.0 | {} |\n",
        peers_met.iter().filter(|m| **m).count(),
        peers_met.len(),
        verdict((!peers_met.is_empty()).then(|| peers_met.iter().all(|m| *m)))
    );
    let missed: Vec<&Judged<'_>> = judged.iter().filter(|j| j.met() == Some(false)).collect();
    if !missed.is_empty() {
        let _ = writeln!(w, "### Missed, and what bounds them\n");
        for j in missed {
            let floor = j
                .budget
                .floor
                .and_then(|f| peer_cost(results, f).map(|m| (f, m)))
                .map(|(f, m)| {
                    let instructions = peer_instructions(results, f)
                        .map(|i| format!(", {i:.0} instructions"))
                        .unwrap_or_default();
                    format!(" Measured floor, `{f}`: {}{instructions}.", ns(m))
                })
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "- **{}** ({}): {} over bare (budget {}; {} instructions). {}.{floor}",
                j.budget.what,
                j.budget.side,
                opt(j.overhead, ns),
                ns(j.budget.limit_ns),
                opt(j.ir_overhead, instructions),
                capitalize(j.budget.bound),
            );
        }
        let _ = writeln!(w);
    }
    let disagree: Vec<&Judged<'_>> = judged
        .iter()
        .filter(|j| match (j.met(), j.estimate) {
            (Some(met), Some(estimate)) => met != (estimate <= j.budget.limit_ns),
            _ => false,
        })
        .collect();
    if !disagree.is_empty() {
        let _ = writeln!(
            w,
            "Where the measured verdict and the instruction estimate disagree, the figure is \
             within the machine's noise of its budget: {}.\n",
            disagree
                .iter()
                .map(|j| format!("{} ({})", j.budget.what, j.budget.side))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    // Every in-process case.
    for (title, prefix) in [
        ("Layers, one at a time (`layers`)", "layers/"),
        ("Full stacks (`stack`)", "stack/"),
        ("Peers and floors, every case (`peers`)", "peers/"),
    ] {
        let _ = writeln!(w, "## {title}\n");
        let _ = writeln!(
            w,
            "| case | median (95 % CI) | overhead (IQR) | × bare | instructions | overhead (instr.) |\n|---|---:|---:|---:|---:|---:|"
        );
        for group in suites::all().iter().filter(|g| g.id.starts_with(prefix)) {
            for id in group.ids() {
                let Some(estimate) = results.estimates.get(&id) else {
                    let _ = writeln!(w, "| `{id}` | not measured | | | | |");
                    continue;
                };
                // Bare cases, and building blocks measured alone, have no overhead.
                let is_bare = id.ends_with("/bare") || !is_rpc(&id);
                let overhead = results.overhead(&id);
                let _ = writeln!(
                    w,
                    "| `{id}` | {} ({}–{}) | {} | {} | {} | {} |",
                    ns(estimate.median),
                    ns(estimate.low),
                    ns(estimate.high),
                    if is_bare {
                        String::new()
                    } else {
                        let iqr = results
                            .overhead_iqr(&id)
                            .map(|(lo, hi)| format!(" ({}…{})", signed_ns(lo), signed_ns(hi)))
                            .unwrap_or_default();
                        opt(overhead.map(|o| o.1), |o| signed_ns(o) + &iqr)
                    },
                    if is_bare {
                        String::new()
                    } else {
                        opt(results.ratio(&id), |r| format!("{r:.2}"))
                    },
                    opt(results.instructions(&id), instructions),
                    if is_bare {
                        String::new()
                    } else {
                        opt(results.instruction_overhead(&id), signed_instructions)
                    },
                );
            }
        }
        let _ = writeln!(w);
        if prefix == "layers/" {
            let _ = writeln!(
                w,
                "`layers/core/observed` is palisade-core's observed future and body with a no-op \
                 observer: what metrics, logging, trace and breaker pay to see the real end of \
                 the RPC. Breaker `open` answers without calling the handler, so it is cheaper \
                 than bare. `jwt/first_sight` sees a token never seen before on every call (the \
                 cache on, as by default; {} tokens in turn); `first_sight_cache_off` verifies \
                 the same token with the cache off.\n",
                palisade_benches::env::FRESH_TOKENS
            );
        }
    }

    // Peers.
    let _ = writeln!(w, "## Peers\n");
    let _ = writeln!(
        w,
        "The overhead of each over the same bare service in the same run; the ratio is \
         Palisade's overhead over the peer's (≤ 1.0: Palisade costs no more). Where the peer \
         does not do the same job, the ratio is shown but not judged.\n"
    );
    let _ = writeln!(
        w,
        "| what | peer | Palisade | peer | ratio | judged | instr. ratio | note |\n|---|---|---:|---:|---:|---|---:|---|"
    );
    for pair in PAIRS.iter().filter(|p| p.kind == PairKind::Peer) {
        let ours = results.overhead(pair.ours).map(|o| o.1);
        let theirs = peer_cost(results, pair.theirs);
        let ir_ratio = match (
            results.instruction_overhead(pair.ours),
            peer_instructions(results, pair.theirs),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            pair.what,
            pair.crate_name,
            opt(ours, signed_ns),
            opt(theirs, signed_ns),
            opt(pair_ratio(results, pair), |r| format!("{r:.2}")),
            if pair.same_job {
                verdict(pair_ratio(results, pair).map(|r| r <= 1.0))
            } else {
                "not the same job"
            },
            opt(ir_ratio, |r| format!("{r:.2}")),
            pair.note
        );
    }
    let _ = writeln!(w, "\n### Floors: the building blocks alone\n");
    let _ = writeln!(
        w,
        "| what | building block | block alone | Palisade's overhead | × block | note |\n|---|---|---:|---:|---:|---|"
    );
    for pair in PAIRS.iter().filter(|p| p.kind == PairKind::Floor) {
        let ours = results.overhead(pair.ours).map(|o| o.1);
        let floor = results.median(pair.theirs);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            pair.what,
            pair.crate_name,
            opt(floor, ns),
            opt(ours, signed_ns),
            opt(pair_ratio(results, pair), |r| format!("{r:.2}")),
            pair.note
        );
    }
    let _ = writeln!(
        w,
        "\nNo peer for metrics (the issue names none): the nearest crate, `tonic_prometheus_layer` \
         0.3, is built on tonic 0.13 (a second tonic in the tree), reads the code from the \
         response headers only (a unary error's code is in the trailers: it counts it as OK), \
         and allocates the path and method as `String`s per call — not the same job. Metrics is \
         judged against its budget only. Nor for jwt: the issue names jsonwebtoken's `decode` \
         as its floor, above.\n"
    );

    // End to end.
    let _ = writeln!(w, "## End to end over loopback (`e2e`)\n");
    let _ = writeln!(
        w,
        "A real tonic server (palisade-demo's routes) and client in one process, over one \
         loopback HTTP/2 connection with `TCP_NODELAY` on both ends, sharing the machine's cores. `bare`: no layer; `server_stack`: the full server stack \
         (trace sampled, JSON logs, metrics, jwt, ratelimit, breaker) and a bare client sending \
         the token; `server_stack_log_off`: the same with the logging layer's levels below the \
         subscriber's (nothing logged); `full`: both full stacks. As the `server` program is \
         deployed: the access log and the application's JSON events go through \
         palisade-logging's non-blocking writer to a real file. Unary is `SayHello`; stream is `SayHelloStream` \
         with 10 replies, a call being the whole stream. Time per call is criterion's median \
         (at 64 in flight, the inverse of the throughput); latencies are over every call of \
         the case.\n"
    );
    let _ = writeln!(
        w,
        "| case | time per call | calls/s | × bare throughput | p50 | p90 | p99 |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for shape in ["unary_1", "unary_64", "stream_1", "stream_64"] {
        for name in ["bare", "server_stack", "server_stack_log_off", "full"] {
            let id = format!("e2e/{shape}/{name}");
            if name == "server_stack_log_off" && results.median(&id).is_none() {
                continue;
            }
            let median = results.median(&id);
            let bare = results.median(&format!("e2e/{shape}/bare"));
            let latency = results.latencies.get(&id);
            let _ = writeln!(
                w,
                "| `{id}` | {} | {} | {} | {} | {} | {} |",
                opt(median, ns),
                opt(median, |m| format!("{:.0}", 1e9 / m)),
                opt(median.zip(bare), |(m, b)| format!("{:.2}", b / m)),
                opt(latency, |l| format!("{} µs", l.p50_us)),
                opt(latency, |l| format!("{} µs", l.p90_us)),
                opt(latency, |l| format!("{} µs ({} calls)", l.p99_us, l.calls)),
            );
        }
    }
    let _ = writeln!(
        w,
        "\nWhat the in-process figures do not show: over the wire, a response future and body are \
         polled until ready, often several times, and trace (attaching the span's context) and logging (entering its \
         span) work on every poll, where an in-process bench polls once; the client's \
         `authorization` value is marked sensitive, so HPACK never indexes it and Huffman-codes \
         it on every call, both ways; and the server, the client and the connection share two \
         cores, so every microsecond of layer work on either side is throughput lost. These \
         figures are wall-clock and move with the machine's load from run to run.\n"
    );

    write_deployed(w, results);

    // How to run.
    let _ = writeln!(w, "## Running the benches\n");
    let _ = writeln!(
        w,
        "```sh\n\
         scripts/bench                  # every bench, instruction counts, then this report (~8 min here)\n\
         scripts/bench --quick          # every bench briefly, report in target/palisade-bench-quick/ (figures meaningless)\n\
         cargo bench -p palisade-benches --bench layers -- server/jwt   # one bench, filtered\n\
         cargo test -p palisade-benches --benches                       # each case once, debug build (CI)\n\
         cargo run --release -p palisade-benches --bin palisade-bench-count -- --callgrind jwt\n\
         cargo run -p palisade-benches --bin palisade-bench-report      # rewrite this file\n\
         ```"
    );
    md
}

/// The three end-to-end figures the issue asks of the project's own benches: the `e2e`
/// bench's deployed cases and the h2load runs against the release `server`, with the load.
fn write_deployed(w: &mut String, results: &Results) {
    let _ = writeln!(w, "## The server as deployed (`e2e` and h2load)\n");
    let e2e = |case: &str| {
        results
            .median("e2e/unary_64/bare")
            .zip(results.median(&format!("e2e/unary_64/{case}")))
            .map(|(b, c)| b / c)
    };
    let rounds = h2load_rounds(&results.h2load);
    let ratio = |name: &str| h2load_ratio(&rounds, name);
    let pct = |r: Option<f64>| opt(r, |r| format!("{:.0} %", r * 100.0));
    let met = |r: Option<f64>, min: f64| verdict(r.map(|r| r >= min));
    let _ = writeln!(
        w,
        "| what | h2load against `server` | `e2e`, unary, 64 in flight | budget | verdict |\n|---|---:|---:|---:|---|"
    );
    let _ = writeln!(
        w,
        "| full server stack, every RPC logged as JSON to a file, × bare | {} | {} (`server_stack`) | ≥ 80 % | {} |",
        pct(ratio("full")),
        pct(e2e("server_stack")),
        met(ratio("full").or(e2e("server_stack")), 0.80)
    );
    let _ = writeln!(
        w,
        "| the same, log level off, × bare | {} | {} (`server_stack_log_off`) | ≥ 90 % (docs/ARCHITECTURE.md: 95 %) | {} |",
        pct(ratio("off")),
        pct(e2e("server_stack_log_off")),
        met(ratio("off").or(e2e("server_stack_log_off")), 0.90)
    );
    let _ = writeln!(
        w,
        "| both stacks, client and server, × bare | | {} (`full`) | ≥ 70 % | {} |\n",
        pct(e2e("full")),
        met(e2e("full"), E2E_BUDGET.min_ratio)
    );
    if rounds.is_empty() {
        let _ = writeln!(
            w,
            "No h2load runs in this run's results (`h2load.txt`): `scripts/bench` runs them when \
             h2load is installed.\n"
        );
        return;
    }
    let _ = writeln!(
        w,
        "h2load (`scripts/bench`'s last step): 2 connections × 32 streams, unary `SayHello`, \
         against the release `server`: `full` with `--log-format json > file`, `off` the same \
         with `RUST_LOG=off`, `bare` with `--bare`, interleaved in rotating order; each ratio is \
         against `bare` of the same round, the verdict is on their median. `log lines`: the \
         `\"grpc.code\":\"OK\"` lines in the `full` run's file after SIGTERM. Load average (1, 5, 15 \
         min) after each round's last run.\n"
    );
    let _ = writeln!(
        w,
        "| round | bare calls/s | full calls/s | off calls/s | full × bare | off × bare | log lines | load |\n|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for (i, round) in rounds.iter().enumerate() {
        let calls = |name: &str| round.get(name).map(|r| r.calls_per_s);
        let ratio = |name: &str| calls(name).zip(calls("bare")).map(|(c, b)| c / b);
        let last = round.values().last().map(|r| r.load.as_str()).unwrap_or("");
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            opt(calls("bare"), |c| format!("{c:.0}")),
            opt(calls("full"), |c| format!("{c:.0}")),
            opt(calls("off"), |c| format!("{c:.0}")),
            opt(ratio("full"), |r| format!("{r:.2}")),
            opt(ratio("off"), |r| format!("{r:.2}")),
            opt(round.get("full").and_then(|r| r.log_lines), |n| n
                .to_string()),
            last
        );
    }
    let _ = writeln!(
        w,
        "| median | | | | **{}** | **{}** | | |\n",
        opt(ratio("full"), |r| format!("{r:.2}")),
        opt(ratio("off"), |r| format!("{r:.2}"))
    );
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

/// The cost of a peer case: its overhead over its group's bare for an RPC, its median for a
/// building block alone.
fn peer_cost(results: &Results, id: &str) -> Option<f64> {
    if results.estimates.contains_key(&baseline(id)) && is_rpc(id) {
        results.overhead(id).map(|o| o.1)
    } else {
        results.median(id)
    }
}

fn peer_instructions(results: &Results, id: &str) -> Option<f64> {
    if is_rpc(id) {
        results.instruction_overhead(id)
    } else {
        results.instructions(id)
    }
}

/// Whether a case is an RPC through a service (compared as an overhead) rather than a building
/// block alone.
fn is_rpc(id: &str) -> bool {
    ![
        "governor_check",
        "failsafe_state_machine",
        "jsonwebtoken_decode",
    ]
    .iter()
    .any(|floor| {
        id.rsplit('/')
            .next()
            .is_some_and(|last| last.starts_with(floor))
    })
}

fn pair_ratio(results: &Results, pair: &palisade_benches::catalog::Pair) -> Option<f64> {
    let ours = results.overhead(pair.ours)?.1;
    let theirs = peer_cost(results, pair.theirs)?;
    (theirs > 0.0).then(|| ours / theirs)
}

/// Full stacks' unary throughput at 64 in flight over bare tonic's.
fn e2e_ratio(results: &Results) -> Option<f64> {
    Some(results.median(E2E_BUDGET.bare)? / results.median(E2E_BUDGET.case)?)
}

/// A horizontal bar chart of each budget line's overhead on a log scale, with its budget.
fn write_svg(results: &Results) -> String {
    let judged: Vec<Judged<'_>> = BUDGETS.iter().map(|b| judge(results, b)).collect();
    let (label_w, plot_w, row_h, top, bottom) = (400.0, 520.0, 26.0, 56.0, 48.0);
    let width = label_w + plot_w + 110.0;
    let height = top + row_h * judged.len() as f64 + bottom;
    let (lo, hi) = (1.0_f64.log10(), 10_000.0_f64.log10());
    let x = |ns: f64| label_w + (ns.max(1.0).log10() - lo) / (hi - lo) * plot_w;
    let mut svg = String::new();
    let s = &mut svg;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.0}" y="22" font-size="15" font-weight="bold" text-anchor="middle">Palisade: median overhead per call over a bare service (log scale)</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.0}" y="40" fill="#555" text-anchor="middle">bar: measured overhead · black tick: budget (docs/ARCHITECTURE.md) · green: met · red: missed · dashed: ≈ ns from instruction counts</text>"##,
        width / 2.0
    );
    for tick in [1.0, 10.0, 100.0, 1_000.0, 10_000.0] {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{top:.0}" x2="{tx:.1}" y2="{:.0}" stroke="#ddd"/><text x="{tx:.1}" y="{:.0}" text-anchor="middle" fill="#555">{}</text>"##,
            height - bottom,
            height - bottom + 16.0,
            ns(tick)
        );
    }
    for (i, j) in judged.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{} ({})</text>"#,
            label_w - 8.0,
            mid + 4.0,
            escape(j.budget.what),
            j.budget.side
        );
        if let Some(overhead) = j.overhead {
            let color = if overhead <= j.budget.limit_ns {
                "#2e9e4f"
            } else {
                "#d2402d"
            };
            let _ = writeln!(
                s,
                r#"<rect x="{label_w:.0}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                y + 5.0,
                (x(overhead) - label_w).max(1.0),
                row_h - 10.0
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
                x(overhead
                    .max(j.budget.limit_ns)
                    .max(j.estimate.unwrap_or(0.0)))
                    + 6.0,
                mid + 4.0,
                ns(overhead)
            );
        }
        if let Some(estimate) = j.estimate {
            let _ = writeln!(
                s,
                r##"<rect x="{label_w:.0}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333" stroke-dasharray="3,2"/>"##,
                y + 8.0,
                (x(estimate) - label_w).max(1.0),
                row_h - 16.0
            );
        }
        let bx = x(j.budget.limit_ns);
        let _ = writeln!(
            s,
            r#"<line x1="{bx:.1}" y1="{:.1}" x2="{bx:.1}" y2="{:.1}" stroke="black" stroke-width="3"/>"#,
            y + 2.0,
            y + row_h - 2.0
        );
    }
    let _ = writeln!(s, "</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = root.join("BENCHMARKS.md");
    let mut svg = root.join("benches/overhead.svg");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().map(PathBuf::from).expect("--out FILE"),
            "--svg" => svg = args.next().map(PathBuf::from).expect("--svg FILE"),
            _ => {
                eprintln!(
                    "usage: palisade-bench-report [--out BENCHMARKS.md] [--svg benches/overhead.svg]"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let results = Results::load(&criterion_dir(), &results_dir());
    if results.estimates.is_empty() {
        eprintln!(
            "no criterion results under {}: run the benches first",
            criterion_dir().display()
        );
        return ExitCode::FAILURE;
    }
    let machine = Machine::probe(&root);
    let svg_link = relative(&svg, out.parent().unwrap_or(&root));
    let mut report = write_report(&results, &machine, &svg_link);
    // What is written by hand below the mark (the profile's account) survives the rerun.
    if let Some(kept) = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| old.find(KEPT).map(|at| old[at..].to_owned()))
    {
        report.push('\n');
        report.push_str(&kept);
    }
    std::fs::write(&out, report).expect("the report is written");
    std::fs::write(&svg, write_svg(&results)).expect("the chart is written");
    println!("wrote {} and {}", out.display(), svg.display());
    ExitCode::SUCCESS
}

/// `path` relative to `dir` when it is under it (for the Markdown link).
fn relative(path: &Path, dir: &Path) -> String {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (path_c, dir_c) = (
        canonical(path.parent().unwrap_or(path)).join(path.file_name().unwrap_or_default()),
        canonical(dir),
    );
    path_c
        .strip_prefix(&dir_c)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_case(dir: &Path, id: &str, median: f64) {
        let new = dir.join(id.replace('/', "_")).join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            format!(r#"{{"group_id":"g","function_id":"f","full_id":"{id}","directory_name":"d","title":"{id}"}}"#),
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            format!(
                r#"{{"median":{{"point_estimate":{median},"confidence_interval":{{"confidence_level":0.95,"lower_bound":{},"upper_bound":{}}},"standard_error":1.0}}}}"#,
                median - 1.0,
                median + 1.0
            ),
        )
        .unwrap();
    }

    #[test]
    fn overheads_verdicts_and_chart_come_from_criterion_files() {
        let dir =
            std::env::temp_dir().join(format!("palisade-bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_case(&dir, "layers/server/metrics/bare", 1000.0);
        write_case(&dir, "layers/server/metrics/metrics", 1100.0);
        write_case(&dir, "layers/server/ratelimit/bare", 1000.0);
        write_case(&dir, "layers/server/ratelimit/direct", 1250.0);
        write_case(&dir, "e2e/unary_64/bare", 100.0);
        write_case(&dir, "e2e/unary_64/full", 125.0);
        let results = Results::load(&dir, &dir.join("none"));
        assert_eq!(
            results.overhead("layers/server/metrics/metrics"),
            Some((1100.0, 100.0))
        );

        let metrics = judge(&results, &BUDGETS[0]);
        assert_eq!(metrics.met(), Some(true));
        let direct = BUDGETS
            .iter()
            .find(|b| b.case == "layers/server/ratelimit/direct")
            .unwrap();
        assert_eq!(judge(&results, direct).met(), Some(false));
        assert_eq!(e2e_ratio(&results), Some(0.8));

        let machine = Machine::probe(&dir);
        // Interleaved overheads, when measured, are the ones judged.
        let paired = dir.join("results");
        std::fs::create_dir_all(&paired).unwrap();
        std::fs::write(
            paired.join("paired.json"),
            r#"{"layers/server/ratelimit/direct":{"per_call_ns":1090.0,"overhead_ns":90.0,"overhead_iqr_ns":[80.0,95.0],"rounds":101,"calls":1000}}"#,
        )
        .unwrap();
        let with_paired = Results::load(&dir, &paired);
        assert_eq!(
            with_paired.overhead("layers/server/ratelimit/direct"),
            Some((1250.0, 90.0))
        );
        assert_eq!(judge(&with_paired, direct).met(), Some(true));

        let md = write_report(&results, &machine, "chart.svg");
        assert!(md.contains("| metrics | server | +100 ns |"), "{md}");
        assert!(md.contains("❌ missed"));
        assert!(md.contains("80.0 % of bare tonic's throughput"), "{md}");
        let svg = write_svg(&results);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn h2load_rounds_and_ratios() {
        let text = "full calls/s=40000 log_lines=20000 load=3.1 2.0 1.5\n\
                    bare calls/s=50000 log_lines=0 load=3.0 2.0 1.5\n\
                    off calls/s=45000 log_lines=0 load=2.9 2.0 1.5\n\
                    bare calls/s=40000 log_lines=0 load=2.9 2.0 1.5\n\
                    off calls/s=40000 log_lines=0 load=2.9 2.0 1.5\n\
                    full calls/s=36000 log_lines=20000 load=2.8 2.0 1.5\n\
                    not a run\n";
        let runs: Vec<H2loadRun> = text.lines().filter_map(H2loadRun::parse).collect();
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].load, "3.1 2.0 1.5");
        assert_eq!(runs[0].log_lines, Some(20000));
        let rounds = h2load_rounds(&runs);
        assert_eq!(rounds.len(), 2);
        assert_eq!(h2load_ratio(&rounds, "full"), Some((0.8 + 0.9) / 2.0));
        assert_eq!(h2load_ratio(&rounds, "off"), Some((0.9 + 1.0) / 2.0));
        let results = Results {
            h2load: runs,
            ..Results::default()
        };
        let mut md = String::new();
        write_deployed(&mut md, &results);
        assert!(
            md.contains("| median | | | | **0.85** | **0.95** | | |"),
            "{md}"
        );
        assert!(
            md.contains("| full server stack, every RPC logged as JSON to a file, × bare | 85 %"),
            "{md}"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(ns(42.4), "42 ns");
        assert_eq!(ns(1234.0), "1.23 µs");
        assert_eq!(signed_ns(-12.0), "−12 ns");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
