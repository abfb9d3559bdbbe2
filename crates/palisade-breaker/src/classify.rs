//! What counts as a failure: the RPC's real outcome, read at the end of its stream.

use std::{fmt, sync::Arc, time::Duration};

use palisade_core::{Code, CodeSet, Outcome, Side, outcome::Source};
use tokio::time::Instant;

/// How one ended call counts for its circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The backend answered: counts toward closing, resets consecutive failures.
    Success,
    /// The backend failed: counts toward opening; a failed probe reopens the circuit.
    Failure,
    /// Counts as neither (the caller went away, or a Palisade layer answered the call
    /// itself): the call's permit is released, nothing else.
    Ignore,
}

/// The codes that are failures by default: Unknown, DeadlineExceeded, Internal, Unavailable
/// and DataLoss — the backend's trouble, not the caller's mistake.
///
/// `ResourceExhausted` is not one: a quota answer is the server asking the caller to slow
/// down (with `grpc-retry-pushback-ms`, which a client rate limiter honours), not a sign the
/// backend is failing. Add it with `DEFAULT_FAILURE_CODES.with(Code::ResourceExhausted)` if
/// your backend answers it when overloaded.
pub const DEFAULT_FAILURE_CODES: CodeSet = CodeSet::of(&[
    Code::Unknown,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
]);

/// Turns an [`Outcome`] into a [`Verdict`].
#[derive(Clone)]
pub(crate) enum Classifier {
    /// Codes in `failures` fail, every other code succeeds; with `transport`, an error of the
    /// inner service or of the body fails whatever its code.
    Codes { failures: CodeSet, transport: bool },
    /// The user's closure.
    Fn(Arc<dyn Fn(&Outcome) -> Verdict + Send + Sync>),
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::Codes {
            failures: DEFAULT_FAILURE_CODES,
            transport: true,
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classifier::Codes {
                failures,
                transport,
            } => f
                .debug_struct("Codes")
                .field("failures", failures)
                .field("transport_errors", transport)
                .finish(),
            Classifier::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// Everything that decides a call's verdict.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) classifier: Classifier,
    pub(crate) slow_call: Option<Duration>,
    /// On a server, outcomes the caller caused (its own deadline, a request that does not
    /// decode) are never the backend's failure.
    pub(crate) side: Side,
}

/// When a call started and when its caller's deadline passes, read only when a rule needs it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timing {
    pub(crate) started: Option<Instant>,
    pub(crate) deadline: Option<Instant>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            classifier: Classifier::default(),
            slow_call: None,
            side: Side::Client,
        }
    }
}

/// The `grpc-message` beginnings of tonic's answers to a request it could not decode
/// (tonic-prost's decode error, tonic's framing and decompression errors): `INTERNAL`, by the
/// gRPC spec, but the caller's doing.
const REQUEST_DECODE_ERRORS: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error: received message with",
    "Error decompressing:",
    "Unexpected EOF decoding stream.",
    "Missing request message.",
];

/// Whether a server's `INTERNAL` is tonic's answer to a request body that does not decode.
fn is_request_decode_error(outcome: &Outcome) -> bool {
    outcome.code() == Code::Internal
        && outcome.message().is_some_and(|message| {
            REQUEST_DECODE_ERRORS
                .iter()
                .any(|prefix| message.starts_with(prefix))
        })
}

impl Rules {
    /// The verdict on a call that ended with `outcome`.
    ///
    /// - A rejection made by a Palisade layer in this process (an inner breaker, a rate
    ///   limiter, auth: [`Outcome::is_local`]) is ignored: it is not the backend's answer.
    /// - A call the caller dropped is ignored. On a client, unless its `grpc-timeout` had
    ///   passed by then: that is a local timeout, read as `DeadlineExceeded`. On a server the
    ///   caller's deadline is the caller's own: tonic dropping the call then is ignored too.
    /// - On a server, tonic's `INTERNAL` answer to a request body that does not decode is
    ///   the caller's doing: ignored.
    /// - A panic ([`Source::Panicked`]) fails, whatever the failure codes.
    /// - A success slower than the slow-call threshold is a failure.
    pub(crate) fn verdict(&self, outcome: &Outcome, timing: Timing) -> Verdict {
        if outcome.is_local() {
            return Verdict::Ignore;
        }
        if self.side == Side::Server
            && (outcome.source() == Source::Dropped || is_request_decode_error(outcome))
        {
            return Verdict::Ignore;
        }
        let mut now = None;
        let mut clock = || *now.get_or_insert_with(Instant::now);
        let expired;
        let outcome = if outcome.source() == Source::Dropped {
            match timing.deadline {
                Some(deadline) if clock() >= deadline => {
                    expired = Outcome::new(Code::DeadlineExceeded, Source::Dropped)
                        .with_message("deadline passed before the call ended");
                    &expired
                }
                _ => return Verdict::Ignore,
            }
        } else {
            outcome
        };
        let verdict = match &self.classifier {
            Classifier::Codes {
                failures,
                transport,
            } => {
                let transport_error =
                    matches!(outcome.source(), Source::ServiceError | Source::BodyError);
                if (*transport && transport_error)
                    || outcome.source() == Source::Panicked
                    || failures.contains(outcome.code())
                {
                    Verdict::Failure
                } else {
                    Verdict::Success
                }
            }
            Classifier::Fn(f) => f(outcome),
        };
        match (verdict, self.slow_call, timing.started) {
            (Verdict::Success, Some(threshold), Some(started))
                if clock().saturating_duration_since(started) > threshold =>
            {
                Verdict::Failure
            }
            _ => verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(rules: &Rules, code: Code, source: Source) -> Verdict {
        rules.verdict(&Outcome::new(code, source), Timing::default())
    }

    #[test]
    fn default_codes_and_transport_errors() {
        let rules = Rules::default();
        for code in DEFAULT_FAILURE_CODES.iter() {
            assert_eq!(
                verdict(&rules, code, Source::Trailers),
                Verdict::Failure,
                "{code:?}"
            );
        }
        for code in DEFAULT_FAILURE_CODES.complement().iter() {
            assert_eq!(
                verdict(&rules, code, Source::TrailersOnly),
                Verdict::Success,
                "{code:?}"
            );
        }
        // An inner service error is a transport failure even when it carries a benign code.
        assert_eq!(
            verdict(&rules, Code::NotFound, Source::ServiceError),
            Verdict::Failure
        );
        assert_eq!(
            verdict(&rules, Code::Cancelled, Source::BodyError),
            Verdict::Failure
        );
        // The caller's cancellation is neither.
        assert_eq!(
            verdict(&rules, Code::Cancelled, Source::Dropped),
            Verdict::Ignore
        );
    }

    #[test]
    fn closure_decides() {
        let rules = Rules {
            classifier: Classifier::Fn(Arc::new(|o: &Outcome| match o.code() {
                Code::Aborted => Verdict::Failure,
                Code::NotFound => Verdict::Ignore,
                _ => Verdict::Success,
            })),
            ..Rules::default()
        };
        assert_eq!(
            verdict(&rules, Code::Aborted, Source::Trailers),
            Verdict::Failure
        );
        assert_eq!(
            verdict(&rules, Code::NotFound, Source::Trailers),
            Verdict::Ignore
        );
        assert_eq!(
            verdict(&rules, Code::Internal, Source::Trailers),
            Verdict::Success
        );
        assert_eq!(
            verdict(&rules, Code::Cancelled, Source::Dropped),
            Verdict::Ignore
        );
    }

    #[test]
    fn local_rejections_are_ignored_and_panics_fail() {
        let closure = Rules {
            classifier: Classifier::Fn(Arc::new(|_: &Outcome| Verdict::Failure)),
            ..Rules::default()
        };
        let only_unavailable = Rules {
            classifier: Classifier::Codes {
                failures: CodeSet::of(&[Code::Unavailable]),
                transport: false,
            },
            ..Rules::default()
        };
        for rules in [&Rules::default(), &closure] {
            let local =
                Outcome::new(Code::Unavailable, Source::TrailersOnly).with_rejected_by("breaker");
            assert_eq!(rules.verdict(&local, Timing::default()), Verdict::Ignore);
        }
        for rules in [&Rules::default(), &only_unavailable] {
            assert_eq!(
                rules.verdict(&Outcome::panicked(), Timing::default()),
                Verdict::Failure
            );
        }
        assert_eq!(
            verdict(
                &Rules::default(),
                Code::ResourceExhausted,
                Source::TrailersOnly
            ),
            Verdict::Success
        );
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_server_what_the_caller_caused_is_ignored() {
        let server = Rules {
            side: Side::Server,
            ..Rules::default()
        };
        let started = Instant::now();
        let timing = Timing {
            started: Some(started),
            deadline: Some(started + Duration::from_millis(1)),
        };
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(
            server.verdict(&Outcome::cancelled(), timing),
            Verdict::Ignore
        );
        assert_eq!(
            Rules::default().verdict(&Outcome::cancelled(), timing),
            Verdict::Failure
        );
        let decode = Outcome::new(Code::Internal, Source::TrailersOnly)
            .with_message("failed to decode Protobuf message: buffer underflow");
        assert_eq!(server.verdict(&decode, Timing::default()), Verdict::Ignore);
        assert_eq!(
            Rules::default().verdict(&decode, Timing::default()),
            Verdict::Failure
        );
        let handler = Outcome::new(Code::Internal, Source::Trailers).with_message("db down");
        assert_eq!(
            server.verdict(&handler, Timing::default()),
            Verdict::Failure
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_successes_and_expired_deadlines_fail() {
        let rules = Rules {
            slow_call: Some(Duration::from_millis(100)),
            ..Rules::default()
        };
        let started = Instant::now();
        let timing = Timing {
            started: Some(started),
            deadline: Some(started + Duration::from_millis(50)),
        };
        let ok = Outcome::new(Code::Ok, Source::Trailers);
        assert_eq!(rules.verdict(&ok, timing), Verdict::Success);
        assert_eq!(
            rules.verdict(&Outcome::cancelled(), timing),
            Verdict::Ignore
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            rules.verdict(&Outcome::cancelled(), timing),
            Verdict::Failure
        );
        assert_eq!(rules.verdict(&ok, timing), Verdict::Success);
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(rules.verdict(&ok, timing), Verdict::Failure);
        let not_found = Outcome::new(Code::NotFound, Source::Trailers);
        assert_eq!(
            rules.verdict(&not_found, timing),
            Verdict::Failure,
            "slow, not the code"
        );
    }
}
