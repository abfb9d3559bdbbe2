//! What counts as a failure: the RPC's real outcome, read at the end of its stream.

use std::{fmt, sync::Arc, time::Duration};

use palisade_core::{Code, CodeSet, Counts, Outcome, Side, outcome::Source};
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
    /// On a server: how long a call must have run for its caller's deadline passing to be the
    /// server's failure (`None`: the slow-call threshold, else
    /// [`DEFAULT_MIN_DEADLINE_FAILURE`]).
    pub(crate) min_deadline_failure: Option<Duration>,
    /// On a server: whether tonic's answers to a request that does not decode are ignored.
    pub(crate) ignore_request_decode_errors: bool,
}

/// On a server, the least time a call must have run for its caller's deadline passing to
/// count as the server's failure, when no slow-call threshold is set: 1 s. See
/// [`BreakerBuilder::min_deadline_failure`](crate::BreakerBuilder::min_deadline_failure).
pub const DEFAULT_MIN_DEADLINE_FAILURE: Duration = Duration::from_secs(1);

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
            min_deadline_failure: None,
            ignore_request_decode_errors: true,
        }
    }
}

/// The `grpc-message` beginnings of tonic's answers to a request it could not decode
/// (tonic-prost's decode error, tonic's framing and decompression errors): `INTERNAL`, by the
/// gRPC spec, but the caller's doing. Pinned by a test against the tonic in use.
pub(crate) const REQUEST_DECODE_ERRORS: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error: received message with",
    "Error decompressing:",
    "Unexpected EOF decoding stream.",
    "Missing request message.",
];

/// Whether a server's `INTERNAL` is tonic's answer to a request body that does not decode:
/// a trailers-only answer (tonic decodes a unary request before the handler runs, and answers
/// its error without a body) with no response message, and one of tonic's messages.
///
/// A handler that passes on, with `?` and before any response message, an upstream's answer
/// that did not decode (tonic's client says the same "failed to decode Protobuf message") is
/// taken for this too: a false negative, the price of never letting a caller's bad bytes
/// count. Turn it off with `BreakerBuilder::ignore_request_decode_errors(false)`.
fn is_request_decode_error(outcome: &Outcome, counts: Counts) -> bool {
    outcome.code() == Code::Internal
        && outcome.source() == Source::TrailersOnly
        && counts.messages == 0
        && outcome.message().is_some_and(|message| {
            REQUEST_DECODE_ERRORS
                .iter()
                .any(|prefix| message.starts_with(prefix))
        })
}

impl Rules {
    /// The verdict on a call that ended with `outcome`, after `counts` response messages.
    ///
    /// - A rejection made by a Palisade layer in this process (an inner breaker, a rate
    ///   limiter, auth: [`Outcome::is_local`]) is ignored: it is not the backend's answer.
    /// - A call the caller dropped is ignored, unless the caller's `grpc-timeout` had passed by
    ///   then: that is a timeout, read as `DeadlineExceeded`.
    /// - On a server, the caller's deadline passing (tonic drops the call) or a
    ///   `DeadlineExceeded` answer to a call that had a deadline is the server's failure only
    ///   when the call ran at least the minimum: a shorter deadline is the caller's doing.
    /// - On a server, tonic's `INTERNAL` answer to a request body that does not decode is
    ///   the caller's doing: ignored (unless turned off).
    /// - A panic ([`Source::Panicked`]) fails, whatever the failure codes.
    /// - A success slower than the slow-call threshold is a failure.
    pub(crate) fn verdict(&self, outcome: &Outcome, counts: Counts, timing: Timing) -> Verdict {
        if outcome.is_local() {
            return Verdict::Ignore;
        }
        let server = self.side == Side::Server;
        if server && self.ignore_request_decode_errors && is_request_decode_error(outcome, counts) {
            return Verdict::Ignore;
        }
        let mut now = None;
        let mut clock = || *now.get_or_insert_with(Instant::now);
        // On a server: whether the call ended too soon for its deadline to be the server's.
        let min = self
            .min_deadline_failure
            .or(self.slow_call)
            .unwrap_or(DEFAULT_MIN_DEADLINE_FAILURE);
        let too_short = |now: Instant| {
            server
                && timing
                    .started
                    .is_none_or(|started| now.saturating_duration_since(started) < min)
        };
        let expired;
        let outcome = if outcome.source() == Source::Dropped {
            match timing.deadline {
                Some(deadline) if clock() >= deadline => {
                    if too_short(clock()) {
                        return Verdict::Ignore;
                    }
                    expired = Outcome::new(Code::DeadlineExceeded, Source::Dropped)
                        .with_message("deadline passed before the call ended");
                    &expired
                }
                _ => return Verdict::Ignore,
            }
        } else {
            if outcome.code() == Code::DeadlineExceeded
                && timing.deadline.is_some()
                && too_short(clock())
            {
                // A handler passing on the caller's own short deadline.
                return Verdict::Ignore;
            }
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
        rules.verdict(
            &Outcome::new(code, source),
            Counts::default(),
            Timing::default(),
        )
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
            assert_eq!(
                rules.verdict(&local, Counts::default(), Timing::default()),
                Verdict::Ignore
            );
        }
        for rules in [&Rules::default(), &only_unavailable] {
            assert_eq!(
                rules.verdict(&Outcome::panicked(), Counts::default(), Timing::default()),
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
            server.verdict(&Outcome::cancelled(), Counts::default(), timing),
            Verdict::Ignore
        );
        assert_eq!(
            Rules::default().verdict(&Outcome::cancelled(), Counts::default(), timing),
            Verdict::Failure
        );
        let decode = Outcome::new(Code::Internal, Source::TrailersOnly)
            .with_message("failed to decode Protobuf message: buffer underflow");
        assert_eq!(
            server.verdict(&decode, Counts::default(), Timing::default()),
            Verdict::Ignore
        );
        assert_eq!(
            Rules::default().verdict(&decode, Counts::default(), Timing::default()),
            Verdict::Failure
        );
        let handler = Outcome::new(Code::Internal, Source::Trailers).with_message("db down");
        assert_eq!(
            server.verdict(&handler, Counts::default(), Timing::default()),
            Verdict::Failure
        );
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_server_a_deadline_is_a_failure_only_past_the_minimum() {
        let server = Rules {
            side: Side::Server,
            ..Rules::default()
        };
        let started = Instant::now();
        let two_seconds = Timing {
            started: Some(started),
            deadline: Some(started + Duration::from_secs(2)),
        };
        let answered = Outcome::new(Code::DeadlineExceeded, Source::Trailers);
        tokio::time::advance(Duration::from_millis(999)).await;
        // Shorter than the default minimum (1 s): the caller's short deadline, passed on.
        assert_eq!(
            server.verdict(&answered, Counts::default(), two_seconds),
            Verdict::Ignore
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            server.verdict(&answered, Counts::default(), two_seconds),
            Verdict::Failure
        );
        // Dropped before the deadline: the caller went away.
        assert_eq!(
            server.verdict(&Outcome::cancelled(), Counts::default(), two_seconds),
            Verdict::Ignore
        );
        // Dropped by tonic at the deadline, after running 2 s: a hung dependency.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            server.verdict(&Outcome::cancelled(), Counts::default(), two_seconds),
            Verdict::Failure
        );
        // Without a caller's deadline, DeadlineExceeded is the server's own.
        assert_eq!(
            server.verdict(&answered, Counts::default(), Timing::default()),
            Verdict::Failure
        );
        // The minimum is the slow-call threshold when set, or set on its own.
        let slow = Rules {
            slow_call: Some(Duration::from_secs(5)),
            ..server.clone()
        };
        let own = Rules {
            min_deadline_failure: Some(Duration::from_millis(100)),
            ..slow.clone()
        };
        assert_eq!(
            slow.verdict(&Outcome::cancelled(), Counts::default(), two_seconds),
            Verdict::Ignore
        );
        assert_eq!(
            own.verdict(&Outcome::cancelled(), Counts::default(), two_seconds),
            Verdict::Failure
        );
    }

    #[test]
    fn only_a_trailers_only_answer_without_messages_reads_as_a_request_decode_error() {
        let server = Rules {
            side: Side::Server,
            ..Rules::default()
        };
        let message = "failed to decode Protobuf message: HelloRequest.name: buffer underflow";
        let trailers_only =
            Outcome::new(Code::Internal, Source::TrailersOnly).with_message(message);
        assert_eq!(
            server.verdict(&trailers_only, Counts::default(), Timing::default()),
            Verdict::Ignore
        );
        // A handler's answer after response messages, or in trailers: the server's failure.
        let in_trailers = Outcome::new(Code::Internal, Source::Trailers).with_message(message);
        assert_eq!(
            server.verdict(&in_trailers, Counts::default(), Timing::default()),
            Verdict::Failure
        );
        let after_messages = Counts {
            messages: 2,
            bytes: 20,
        };
        assert_eq!(
            server.verdict(&trailers_only, after_messages, Timing::default()),
            Verdict::Failure
        );
        // Turned off: counted as any INTERNAL.
        let off = Rules {
            ignore_request_decode_errors: false,
            ..server
        };
        assert_eq!(
            off.verdict(&trailers_only, Counts::default(), Timing::default()),
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
        assert_eq!(
            rules.verdict(&ok, Counts::default(), timing),
            Verdict::Success
        );
        assert_eq!(
            rules.verdict(&Outcome::cancelled(), Counts::default(), timing),
            Verdict::Ignore
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            rules.verdict(&Outcome::cancelled(), Counts::default(), timing),
            Verdict::Failure
        );
        assert_eq!(
            rules.verdict(&ok, Counts::default(), timing),
            Verdict::Success
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            rules.verdict(&ok, Counts::default(), timing),
            Verdict::Failure
        );
        let not_found = Outcome::new(Code::NotFound, Source::Trailers);
        assert_eq!(
            rules.verdict(&not_found, Counts::default(), timing),
            Verdict::Failure,
            "slow, not the code"
        );
    }
}
