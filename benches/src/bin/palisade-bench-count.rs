//! Instruction counts of the in-process bench cases, with callgrind: deterministic, and blind
//! to how loaded the machine is.
//!
//! ```text
//! palisade-bench-count --list                     every case id
//! palisade-bench-count CASE [WARMUP CALLS]        runs one case (what callgrind runs)
//! palisade-bench-count --callgrind [FILTER ...]   runs every case (whose id contains a
//!                                                 filter) under callgrind and merges the
//!                                                 counts into target/palisade-bench/instructions.json
//! ```
//!
//! Each case runs `WARMUP` calls (default 1100: caches filled, every peer's bucket made,
//! first-call work done), then
//! `CALLS` more (default 1000) inside `palisade_benches::case::counted_region`, whose
//! instructions alone callgrind collects (`--toggle-collect`), requests built before it.
//! Instructions per call is the count divided by `CALLS`.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    process::{Command, ExitCode},
    time::Instant,
};

use palisade_benches::{case::Group, results_dir, suites};
use serde::{Deserialize, Serialize};

/// More than `requests::PEERS`, so keyed stores hold every key before counting starts.
const WARMUP: u64 = 1100;
const CALLS: u64 = 1000;

/// `target/palisade-bench/instructions.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counts {
    /// `valgrind --version`.
    valgrind: String,
    /// Case id → instructions per call.
    cases: BTreeMap<String, Count>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Count {
    instructions_per_call: f64,
    calls: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--list") => {
            for group in suites::all() {
                for id in group.ids() {
                    println!("{id}");
                }
            }
            ExitCode::SUCCESS
        }
        Some("--callgrind") => callgrind(&args[1..]),
        Some(id) if !id.starts_with('-') => {
            let warmup = args
                .get(1)
                .map_or(WARMUP, |n| n.parse().expect("WARMUP is a number"));
            let calls = args
                .get(2)
                .map_or(CALLS, |n| n.parse().expect("CALLS is a number"));
            run(id, warmup, calls)
        }
        _ => {
            eprintln!(
                "usage: palisade-bench-count --list | CASE [WARMUP CALLS] | --callgrind [FILTER ...]"
            );
            ExitCode::FAILURE
        }
    }
}

fn find(groups: Vec<Group>, id: &str) -> Option<Box<dyn palisade_benches::case::Case>> {
    for group in groups {
        for (name, make) in &group.cases {
            if format!("{}/{name}", group.id) == id {
                return Some(make());
            }
        }
    }
    None
}

fn run(id: &str, warmup: u64, calls: u64) -> ExitCode {
    palisade_benches::env::get();
    let Some(mut case) = find(suites::all(), id) else {
        eprintln!("no case {id}; see --list");
        return ExitCode::FAILURE;
    };
    case.count(warmup, calls);
    ExitCode::SUCCESS
}

fn callgrind(filters: &[String]) -> ExitCode {
    let version = match Command::new("valgrind").arg("--version").output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        _ => {
            eprintln!("valgrind is not installed: no instruction counts");
            return ExitCode::FAILURE;
        }
    };
    let exe = std::env::current_exe().expect("the path of this binary");
    let path = results_dir().join("instructions.json");
    let mut counts: Counts = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    counts.valgrind = version;
    let ids: Vec<String> = suites::all()
        .iter()
        .flat_map(|group| group.ids().collect::<Vec<_>>())
        .filter(|id| filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str())))
        .collect();
    let mut failed = false;
    for (i, id) in ids.iter().enumerate() {
        let start = Instant::now();
        let output = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=*counted_region*",
            ])
            .arg(&exe)
            .args([id.as_str(), &WARMUP.to_string(), &CALLS.to_string()])
            // Few fresh tokens are needed for so few calls; minting them under valgrind is slow.
            .env("PALISADE_BENCH_FRESH_TOKENS", "4096")
            .output()
            .expect("valgrind runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let collected = stderr
            .lines()
            .find_map(|line| {
                line.split_once("Collected :")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .and_then(|n| n.parse::<u64>().ok());
        match (output.status.success(), collected) {
            (true, Some(instructions)) => {
                let per_call = instructions as f64 / CALLS as f64;
                println!(
                    "[{}/{}] {id}: {per_call:.0} instructions per call ({:.1} s)",
                    i + 1,
                    ids.len(),
                    start.elapsed().as_secs_f64()
                );
                counts.cases.insert(
                    id.clone(),
                    Count {
                        instructions_per_call: per_call,
                        calls: CALLS,
                    },
                );
            }
            _ => {
                failed = true;
                eprintln!("{id}: callgrind failed\n{stderr}");
            }
        }
    }
    std::fs::create_dir_all(results_dir()).expect("the results directory");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&counts).expect("counts serialize"),
    )
    .expect("instructions.json is written");
    println!("wrote {}", path.display());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
