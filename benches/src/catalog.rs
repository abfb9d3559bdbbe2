//! What the report judges: the budgets of docs/ARCHITECTURE.md, mapped to bench cases, and the
//! peer comparisons. Case ids are criterion's full ids (`group/function`); a case's baseline
//! is the `bare` of its group.

/// One line of the budget table in docs/ARCHITECTURE.md ("Performance budgets"), on one side.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// The budget table's line, e.g. `ratelimit, keyed`.
    pub what: &'static str,
    /// `server` or `client`.
    pub side: &'static str,
    /// The measured case.
    pub case: &'static str,
    /// The most overhead over bare the budget allows, in nanoseconds.
    pub limit_ns: f64,
    /// What the cost is made of, and what bounds it from below (shown when missed).
    pub bound: &'static str,
    /// A case whose median is that bound, measured in the same run, if any.
    pub floor: Option<&'static str>,
}

const fn budget(
    what: &'static str,
    side: &'static str,
    case: &'static str,
    limit_ns: f64,
    bound: &'static str,
    floor: Option<&'static str>,
) -> Budget {
    Budget {
        what,
        side,
        case,
        limit_ns,
        bound,
        floor,
    }
}

const OBSERVED: &str = "palisade-core's observed future and body — reading the trailers' \
    `grpc-status` where the RPC really ends — are a large part of it (`layers/core/observed`)";

/// The budgets of docs/ARCHITECTURE.md ("Performance budgets"), as the benches measure them.
pub const BUDGETS: &[Budget] = &[
    budget(
        "metrics",
        "server",
        "layers/server/metrics/metrics",
        150.0,
        "palisade-core's observed future and body (`layers/core/observed`), then \
         metrics-exporter-prometheus's histogram record — about a third of the instructions: \
         each sample is pushed raw into an atomic bucket whose blocks are allocated, zeroed, as \
         they fill, and the buckets are counted at upkeep — then the per-method handle lookup, \
         the clock and three counters",
        Some("layers/core/observed"),
    ),
    budget(
        "metrics",
        "client",
        "layers/client/metrics/metrics",
        150.0,
        "as on the server: the observed body and metrics-exporter-prometheus's histogram record",
        Some("layers/core/observed"),
    ),
    budget(
        "ratelimit, one direct bucket",
        "server",
        "layers/server/ratelimit/direct",
        100.0,
        "governor's check alone is the floor below; the layer adds the exemption matcher \
         (health, reflection), the backend call, tokio's clock and the \
         `palisade_ratelimit_allowed_total` counter",
        Some("peers/ratelimit/governor_check"),
    ),
    budget(
        "ratelimit, one direct bucket",
        "client",
        "layers/client/ratelimit/direct",
        100.0,
        "as on the server: governor's check, tokio's clock, the allowed-calls counter",
        Some("peers/ratelimit/governor_check"),
    ),
    budget(
        "ratelimit, keyed",
        "server",
        "layers/server/ratelimit/keyed",
        250.0,
        "hashing the key (the peer IP) and a lookup in the bounded keyed store before governor's \
         check",
        Some("peers/ratelimit/governor_check_key"),
    ),
    budget(
        "limit, fixed (under the limit)",
        "server",
        "layers/server/limit/fixed",
        50.0,
        "palisade-core's admission middleware with a watched future and body that read no \
         status and count nothing (a fixed limit's permit reads no outcome), one \
         compare-and-swap taking the permit and one atomic subtraction giving it back at the \
         end of the stream, the `palisade_inflight` gauge",
        Some("layers/core/observed"),
    ),
    budget(
        "breaker, closed",
        "server",
        "layers/server/breaker/closed",
        100.0,
        "palisade-core's observed future and body (reading the trailers' `grpc-status`, \
         `layers/core/observed`), the admission (failsafe's state machine behind the registry; \
         alone, `peers/breaker/failsafe_state_machine`), parsing `grpc-timeout` (to tell a \
         caller's timeout from a cancellation) and recording the success",
        Some("layers/core/observed"),
    ),
    budget(
        "breaker, closed",
        "client",
        "layers/client/breaker/closed",
        100.0,
        OBSERVED,
        Some("layers/core/observed"),
    ),
    budget(
        "deadline",
        "server",
        "layers/server/deadline/within_deadline",
        50.0,
        "parsing the caller's `grpc-timeout`, reading tokio's clock, the `Deadline` into the \
         request extensions (the first insert allocates the extensions' map) and the current \
         deadline entered around the call and each poll of the future and body; no timer on \
         this path (the handler answers at once)",
        None,
    ),
    budget(
        "retry, unary happy path",
        "client",
        "layers/client/retry/retry_ok",
        150.0,
        "the request head kept for later attempts (method, URI, headers and extensions cloned),          the body read into the replay buffer (one copy of the request message, behind a          mutex) and boxed into tonic's body, the channel cloned, the answer's head read for its          verdict; the budget's allows one copy of the body on top",
        None,
    ),
    budget(
        "trace, sampled with a no-op exporter",
        "server",
        "layers/server/trace/sampled",
        1000.0,
        "the OpenTelemetry SDK: extracting the caller's context (see `not sampled`), building a \
         recording span with its attributes, ending it through the simple processor",
        None,
    ),
    budget(
        "trace, sampled with a no-op exporter",
        "client",
        "layers/client/trace/sampled",
        1000.0,
        "the OpenTelemetry SDK's recording span, and injecting `traceparent` and `baggage`",
        None,
    ),
    budget(
        "trace, not sampled",
        "server",
        "layers/server/trace/not_sampled",
        150.0,
        "extracting the caller's context: opentelemetry_sdk's `TraceContextPropagator::extract` \
         alone is about half of the instructions (callgrind; it splits and validates \
         `traceparent` into allocated parts), the baggage propagator and the SDK's sampling \
         decision most of the rest — the budget is below what the SDK's propagator costs",
        None,
    ),
    budget(
        "trace, not sampled",
        "client",
        "layers/client/trace/not_sampled",
        150.0,
        "the SDK's non-recording span and injecting `traceparent` and `baggage` (formatting and \
         inserting two headers)",
        None,
    ),
    budget(
        "logging, JSON to a sink",
        "server",
        "layers/server/logging/json",
        1500.0,
        "tracing-subscriber's `fmt().json()`: about two thirds of the instructions format the \
         event (serde_json escaping every field, the timestamp, the peer address) and a sixth \
         format the span's fields when it opens (callgrind); the layer's own work is the rest",
        None,
    ),
    budget(
        "logging, JSON to a sink",
        "client",
        "layers/client/logging/json",
        1500.0,
        "tracing-subscriber's JSON formatter, with fewer fields than on the server",
        None,
    ),
    budget(
        "logging, level disabled",
        "server",
        "layers/server/logging/disabled",
        50.0,
        "after `tracing`'s interest check finds nothing enabled, the layer still wraps the \
         future and the body to learn how the call ends",
        None,
    ),
    budget(
        "logging, level disabled",
        "client",
        "layers/client/logging/disabled",
        50.0,
        "as on the server",
        None,
    ),
    budget(
        "jwt HS256, first sight",
        "server",
        "layers/server/jwt/first_sight",
        2000.0,
        "verifying the token — base64, JSON, HMAC-SHA256; jsonwebtoken's own `decode` of the \
         same token (`peers/jwt/jsonwebtoken_decode`) costs more — and the cache insert (compare \
         `first_sight_cache_off`)",
        Some("peers/jwt/jsonwebtoken_decode"),
    ),
    budget(
        "jwt HS256, verified-token cache hit",
        "server",
        "layers/server/jwt/cache_hit",
        200.0,
        "hashing the token and a lookup in the verified-token cache, the `exp` check, the claims \
         into the extensions",
        None,
    ),
    budget(
        "full server stack (all of the above, cache hit)",
        "server",
        "stack/server/full",
        4000.0,
        "the sum of its layers; logging's JSON formatting and trace's sampled span are most of \
         it (see above); `stack/server/quiet` (trace not sampled, logging's level disabled) is \
         the same stack without them",
        None,
    ),
    budget(
        "full server stack, logging as deployed (access-log line, JsonFields span)",
        "server",
        "stack/server/deployed",
        2500.0,
        "as `stack/server/full`, logging as the `server` program does: the hand-written access \
         line through the non-blocking writer and the RPC span's fields by `JsonFields` (issue \
         #16's ≤ 2.5 µs)",
        None,
    ),
    budget(
        "full client stack, logging as deployed",
        "client",
        "stack/client/deployed",
        1500.0,
        "as `stack/client/full`, logging as the `client` program does (issue #16's ≤ 1.5 µs)",
        None,
    ),
];

/// The end-to-end budget: the full stacks' throughput over bare tonic's, unary, 64 in flight
/// (docs/ARCHITECTURE.md, "Performance budgets": ≥ 70 %).
pub const E2E_BUDGET: E2eBudget = E2eBudget {
    case: "e2e/unary_64/full",
    bare: "e2e/unary_64/bare",
    min_ratio: 0.7,
};

/// See [`E2E_BUDGET`].
#[derive(Clone, Copy, Debug)]
pub struct E2eBudget {
    /// The stacked case.
    pub case: &'static str,
    /// The bare case.
    pub bare: &'static str,
    /// The least throughput ratio allowed.
    pub min_ratio: f64,
}

/// A peer or a floor, beside a Palisade case.
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    /// What is compared.
    pub what: &'static str,
    /// The Palisade case.
    pub ours: &'static str,
    /// The other crate's case.
    pub theirs: &'static str,
    /// The crate (and version line) on the other side.
    pub crate_name: &'static str,
    /// A peer (judged: ratio of overheads ≤ 1.0) or a floor (the building block alone, shown).
    /// The issue names no jwt middleware: jsonwebtoken's `decode` is jwt's floor.
    pub kind: PairKind,
    /// Whether both do the same job; if not, the ratio is shown but not judged.
    pub same_job: bool,
    /// What differs.
    pub note: &'static str,
}

/// See [`Pair::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    /// A middleware doing the same job: overheads over the same bare service compared.
    Peer,
    /// A building block alone, no RPC: Palisade's overhead against its bare cost.
    Floor,
}

/// The comparisons of the `peers` bench.
pub const PAIRS: &[Pair] = &[
    Pair {
        what: "logging, JSON to a sink",
        ours: "peers/logging/palisade",
        theirs: "peers/logging/tower_http",
        crate_name: "tower-http 0.7 `TraceLayer::new_for_grpc`",
        kind: PairKind::Peer,
        same_job: true,
        note: "both: one INFO span and one INFO event at the end of the stream, after the trailers (tower-http's `on_eos`). tower-http's event has the duration but not the gRPC code, service, method or peer",
    },
    Pair {
        what: "logging, level disabled",
        ours: "peers/logging/palisade_disabled",
        theirs: "peers/logging/tower_http_disabled",
        crate_name: "tower-http 0.7 `TraceLayer::new_for_grpc`",
        kind: PairKind::Peer,
        same_job: true,
        note: "both targets filtered out",
    },
    Pair {
        what: "trace, sampled",
        ours: "peers/trace/palisade",
        theirs: "peers/trace/tonic_tracing_opentelemetry",
        crate_name: "tonic-tracing-opentelemetry 0.42 (+ tracing-opentelemetry 0.34)",
        kind: PairKind::Peer,
        same_job: false,
        note: "not the same job: its span ends when the response headers arrive, so it never sees the trailers — a unary call's real code, a stream's end — and the span misses the body's time; it also needs a `tracing` subscriber with tracing-opentelemetry's layer (counted here)",
    },
    Pair {
        what: "trace, not sampled",
        ours: "peers/trace/palisade_not_sampled",
        theirs: "peers/trace/tonic_tracing_opentelemetry_not_sampled",
        crate_name: "tonic-tracing-opentelemetry 0.42 (+ tracing-opentelemetry 0.34)",
        kind: PairKind::Peer,
        same_job: false,
        note: "as above",
    },
    Pair {
        what: "ratelimit, one global bucket",
        ours: "peers/ratelimit/palisade_direct",
        theirs: "peers/ratelimit/tower_governor_global",
        crate_name: "tower_governor 0.8 (`GlobalKeyExtractor`)",
        kind: PairKind::Peer,
        same_job: true,
        note: "tower_governor does less per call: it checks governor's keyed (DashMap) store under the key `()` on the quanta clock, and that is all; Palisade also parses the method path, checks the health/reflection exemption, reads tokio's clock (so paused time drives it in tests) and counts `palisade_ratelimit_allowed_total` per method. Both handlers answer `tonic::body::Body`, which tower_governor's rejection needs",
    },
    Pair {
        what: "ratelimit, keyed by peer IP",
        ours: "peers/ratelimit/palisade_keyed",
        theirs: "peers/ratelimit/tower_governor_keyed",
        crate_name: "tower_governor 0.8 (key: tonic's peer IP)",
        kind: PairKind::Peer,
        same_job: true,
        note: "1 000 peers in turn. tower_governor's keyed store is an unbounded DashMap keyed by the IP itself; Palisade's is bounded, hashes keys with a keyed SipHash (never storing them), and does the per-call work of the direct case too",
    },
    Pair {
        what: "breaker, closed",
        ours: "peers/breaker/palisade",
        theirs: "peers/breaker/tower_resilience",
        crate_name: "tower-resilience-circuitbreaker 0.14",
        kind: PairKind::Peer,
        same_job: false,
        note: "not the same job: it classifies the `Result` of the response future, so it sees a trailers-only rejection's headers but never a unary response's trailers nor a stream's end; the open circuit is an `Err`, not a gRPC status",
    },
    Pair {
        what: "jwt HS256, first sight",
        ours: "peers/jwt/palisade_first_sight",
        theirs: "peers/jwt/jsonwebtoken_decode",
        crate_name: "jsonwebtoken 11 `decode` (aws-lc-rs)",
        kind: PairKind::Floor,
        same_job: false,
        note: "decode alone: no header lookup, no `Bearer` parsing, no cache insert, no claims into the extensions, no request",
    },
    Pair {
        what: "jwt HS256, cache hit",
        ours: "peers/jwt/palisade_cache_hit",
        theirs: "peers/jwt/jsonwebtoken_decode",
        crate_name: "jsonwebtoken 11 `decode` (aws-lc-rs)",
        kind: PairKind::Floor,
        same_job: false,
        note: "a whole call with a token seen before, against decoding the token again",
    },
    Pair {
        what: "ratelimit engine, direct",
        ours: "peers/ratelimit/palisade_direct",
        theirs: "peers/ratelimit/governor_check",
        crate_name: "governor 0.10 `RateLimiter::check`",
        kind: PairKind::Floor,
        same_job: false,
        note: "the building block alone",
    },
    Pair {
        what: "ratelimit engine, keyed",
        ours: "peers/ratelimit/palisade_keyed",
        theirs: "peers/ratelimit/governor_check_key",
        crate_name: "governor 0.10 `RateLimiter::check_key` (DashMap)",
        kind: PairKind::Floor,
        same_job: false,
        note: "the building block alone",
    },
    Pair {
        what: "breaker engine",
        ours: "peers/breaker/palisade",
        theirs: "peers/breaker/failsafe_state_machine",
        crate_name: "failsafe 1.3 `StateMachine` (permit + success)",
        kind: PairKind::Floor,
        same_job: false,
        note: "the building block alone",
    },
];

/// The `bare` case of `case`'s group.
pub fn baseline(case: &str) -> String {
    match case.rsplit_once('/') {
        Some((group, _)) => format!("{group}/bare"),
        None => "bare".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_judged_case_exists() {
        let ids: Vec<String> = crate::suites::all()
            .iter()
            .flat_map(|g| g.ids().collect::<Vec<_>>())
            .collect();
        let known = |id: &str| ids.iter().any(|known| known == id);
        for budget in BUDGETS {
            assert!(known(budget.case), "{}", budget.case);
            assert!(known(&baseline(budget.case)), "{}", budget.case);
            if let Some(floor) = budget.floor {
                assert!(known(floor), "{floor}");
            }
        }
        for pair in PAIRS {
            assert!(known(pair.ours) && known(pair.theirs), "{pair:?}");
            assert!(known(&baseline(pair.ours)), "{pair:?}");
        }
    }
}
