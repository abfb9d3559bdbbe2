//! What an attempt's answer means for the call: its [`Verdict`], read from the response head
//! alone (a call whose messages started is never replayed).

use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use palisade_core::{Code, CodeSet, LocalRejection, code, headers::GRPC_RETRY_PUSHBACK_MS};

/// How an attempt ended, for the retry decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The call's answer: `OK`, or response headers (messages follow), so it counts as a
    /// success for the budget.
    Success,
    /// The call's answer, a failure that is not retried (a code outside the set).
    Final,
    /// Made in this process by a Palisade layer inside (an open breaker, a local limit): never
    /// retried, never counted against the backend.
    Local,
    /// A retryable (or non-fatal) failure before any message, with the server's pushback.
    Retryable(Pushback),
}

/// The server's `grpc-retry-pushback-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// None sent: the policy's backoff.
    None,
    /// Retry after exactly this long.
    After(Duration),
    /// Negative or malformed: do not retry (A6).
    Stop,
}

/// The verdict on an attempt's result; an error (no response: the connection failed or was
/// refused) is an `UNAVAILABLE` answer, as tonic reports it.
pub(crate) fn verdict<B, E>(result: &Result<Response<B>, E>, retry_on: CodeSet) -> Verdict {
    let response = match result {
        Ok(response) => response,
        Err(_) if retry_on.contains(Code::Unavailable) => {
            return Verdict::Retryable(Pushback::None);
        }
        Err(_) => return Verdict::Final,
    };
    if LocalRejection::of(response).is_some() {
        return Verdict::Local;
    }
    let headers = response.headers();
    let code = if response.status() == StatusCode::OK {
        match code::grpc_status(headers) {
            Some(code) => code,
            // A head without a status: messages follow, the call is committed.
            None => return Verdict::Success,
        }
    } else {
        code::grpc_status(headers).unwrap_or_else(|| code::from_http_status(response.status()))
    };
    if code == Code::Ok {
        Verdict::Success
    } else if retry_on.contains(code) {
        Verdict::Retryable(pushback(headers))
    } else {
        Verdict::Final
    }
}

/// The pushback in a trailers-only response's headers: a non-negative decimal integer of
/// milliseconds; anything else there means stop.
fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get(GRPC_RETRY_PUSHBACK_MS) else {
        return Pushback::None;
    };
    let digits = value.as_bytes();
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return Pushback::Stop;
    }
    // Twenty digits may still overflow a u64: that is as good as "never".
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
    {
        Some(ms) => Pushback::After(Duration::from_millis(ms)),
        None => Pushback::Stop,
    }
}

#[cfg(test)]
mod tests {
    use palisade_core::Rejection;

    use super::*;

    fn trailers_only(code: &'static str, pushback: Option<&'static str>) -> Response<()> {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert("grpc-status", code.parse().unwrap());
        if let Some(pushback) = pushback {
            response
                .headers_mut()
                .insert("grpc-retry-pushback-ms", pushback.parse().unwrap());
        }
        response
    }

    const UNAVAILABLE: CodeSet = CodeSet::of(&[Code::Unavailable]);

    fn of(response: Response<()>) -> Verdict {
        verdict::<_, ()>(&Ok(response), UNAVAILABLE)
    }

    #[test]
    fn codes_and_heads() {
        assert_eq!(of(trailers_only("0", None)), Verdict::Success);
        assert_eq!(of(Response::new(())), Verdict::Success, "messages follow");
        assert_eq!(of(trailers_only("3", None)), Verdict::Final);
        assert_eq!(
            of(trailers_only("14", None)),
            Verdict::Retryable(Pushback::None)
        );
        let mut bad_gateway = Response::new(());
        *bad_gateway.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            of(bad_gateway),
            Verdict::Retryable(Pushback::None),
            "HTTP 503 is UNAVAILABLE"
        );
        assert_eq!(
            verdict::<(), _>(&Err(()), UNAVAILABLE),
            Verdict::Retryable(Pushback::None)
        );
        assert_eq!(
            verdict::<(), _>(&Err(()), CodeSet::of(&[Code::Internal])),
            Verdict::Final
        );
        let local = Rejection::new(Code::Unavailable, "circuit open")
            .by("breaker")
            .into_response();
        assert_eq!(of(local), Verdict::Local);
    }

    #[test]
    fn pushback_values() {
        let with = |value| of(trailers_only("14", Some(value)));
        assert_eq!(
            with("300"),
            Verdict::Retryable(Pushback::After(Duration::from_millis(300)))
        );
        assert_eq!(
            with("0"),
            Verdict::Retryable(Pushback::After(Duration::ZERO))
        );
        for bad in [
            "-1",
            "",
            "1.5",
            "abc",
            " 10",
            "+5",
            "99999999999999999999",
            "123456789012345678901234",
        ] {
            assert_eq!(with(bad), Verdict::Retryable(Pushback::Stop), "{bad:?}");
        }
        assert_eq!(
            with("18446744073709551615"),
            Verdict::Retryable(Pushback::After(Duration::from_millis(u64::MAX)))
        );
    }
}
