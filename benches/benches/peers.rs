//! Palisade's layers beside the Rust crates people use for the same jobs, in one run:
//! tower-http's `TraceLayer::new_for_grpc` (logging), tonic-tracing-opentelemetry (trace),
//! tower_governor (ratelimit), tower-resilience's circuit breaker (breaker), and the building
//! blocks alone — governor's `check`, failsafe's state machine, jsonwebtoken's `decode`. The
//! cases are `palisade_benches::suites::peers`.
#![allow(missing_docs)]

fn main() {
    palisade_benches::main_for("peers", palisade_benches::suites::peers);
}
