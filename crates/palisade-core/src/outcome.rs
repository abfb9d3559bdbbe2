//! The outcome of an RPC: its gRPC code, read from wherever it really is.

use std::{any::Any, borrow::Cow, error::Error, fmt};

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use percent_encoding::percent_decode;
use tonic::Status;

use crate::{
    code::{self, Code},
    rejection::LocalRejection,
};

/// Where an [`Outcome`]'s code was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// `grpc-status` in the trailers at the end of the response stream.
    Trailers,
    /// `grpc-status` in the response headers of a trailers-only response.
    TrailersOnly,
    /// An HTTP status other than 200 without `grpc-status`, mapped by the gRPC spec's table.
    HttpStatus,
    /// The stream ended, or its trailers came, without any `grpc-status` (read as `Unknown`).
    MissingStatus,
    /// The body failed mid-stream.
    BodyError,
    /// The caller dropped the call before it ended (`Cancelled`).
    Dropped,
    /// The inner service returned an error instead of a response.
    ServiceError,
    /// A request body that ended normally (its code is `Ok`).
    EndOfStream,
    /// The inner service panicked: the panic unwound through the observed future's or body's
    /// poll, or (on the server) the call was dropped while its thread unwound. Read as
    /// `Internal`, never as the caller's cancellation.
    Panicked,
    /// The response ended normally and its status was not read: its observer does not read
    /// outcomes ([`Observer::reads_outcome`](crate::Observer::reads_outcome)). Read as
    /// `Unknown`.
    Unread,
}

/// The result of one RPC: its gRPC code, where that code came from, its message, and — when a
/// Palisade layer answered the call itself — which layer ([`Outcome::rejected_by`]).
///
/// # Example
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use palisade_core::{outcome::Source, Code, Outcome};
///
/// let mut trailers = HeaderMap::new();
/// trailers.insert("grpc-status", HeaderValue::from_static("5"));
/// trailers.insert("grpc-message", HeaderValue::from_static("no%20such%20user"));
/// let outcome = Outcome::from_trailers(&trailers);
/// assert_eq!(outcome.code(), Code::NotFound);
/// assert_eq!(outcome.source(), Source::Trailers);
/// assert_eq!(outcome.message().as_deref(), Some("no such user"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    code: Code,
    source: Source,
    message: Option<Message>,
    rejected_by: Option<&'static str>,
}

#[derive(Clone, PartialEq, Eq)]
enum Message {
    /// A `grpc-message` value, still percent-encoded.
    Header(HeaderValue),
    Text(Cow<'static, str>),
}

impl Outcome {
    /// An outcome with a code and no message.
    pub const fn new(code: Code, source: Source) -> Self {
        Self {
            code,
            source,
            message: None,
            rejected_by: None,
        }
    }

    /// Adds a message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(Message::Text(message.into()));
        self
    }

    /// Marks the outcome as a rejection made by the Palisade layer named `layer`; see
    /// [`Outcome::rejected_by`].
    #[must_use]
    pub fn with_rejected_by(mut self, layer: &'static str) -> Self {
        self.rejected_by = Some(layer);
        self
    }

    /// The caller dropped the call before it ended.
    pub const fn cancelled() -> Self {
        Self::new(Code::Cancelled, Source::Dropped)
    }

    /// A response that ended normally, its status not read (its observer does not read
    /// outcomes): `Unknown`, from [`Source::Unread`].
    pub const fn unread() -> Self {
        Self::new(Code::Unknown, Source::Unread)
    }

    /// The inner service panicked while the call was in flight: `Internal`, from
    /// [`Source::Panicked`].
    pub const fn panicked() -> Self {
        Self {
            code: Code::Internal,
            source: Source::Panicked,
            message: Some(Message::Text(Cow::Borrowed("panicked"))),
            rejected_by: None,
        }
    }

    /// The outcome of a call dropped on `side` before it ended, `panicking` telling whether
    /// the thread was unwinding then (see [`std::thread::panicking`]). A panic that went
    /// through the observed poll is reported there ([`Outcome::panicked`]); a drop while
    /// unwinding is the caller's cancellation on the client — its own program panicked, the
    /// backend did not — and the service's failure on the server, where no code in the process
    /// is the remote caller's.
    pub(crate) fn dropped(side: crate::Side, panicking: bool) -> Self {
        if panicking && side == crate::Side::Server {
            Self::panicked()
        } else {
            Self::cancelled()
        }
    }

    /// Reads the outcome from trailers: `grpc-status` (missing: `Unknown`) and `grpc-message`.
    pub fn from_trailers(trailers: &HeaderMap) -> Self {
        match code::grpc_status(trailers) {
            Some(code) => Self {
                code,
                source: Source::Trailers,
                // An OK call's message means nothing; skipping it saves a lookup per call.
                message: if code == Code::Ok {
                    None
                } else {
                    grpc_message(trailers)
                },
                rejected_by: None,
            },
            None => Self::new(Code::Unknown, Source::MissingStatus),
        }
    }

    /// The outcome of a response whose RPC already ended at its headers: a trailers-only
    /// response (`grpc-status` in the headers), or an HTTP status other than 200 (mapped by the
    /// gRPC spec's table). `None` when the outcome comes later, with the body's trailers.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use palisade_core::{Code, Outcome};
    ///
    /// let headers = HeaderMap::new();
    /// let outcome = Outcome::from_response_head(StatusCode::SERVICE_UNAVAILABLE, &headers);
    /// assert_eq!(outcome.unwrap().code(), Code::Unavailable);
    /// assert!(Outcome::from_response_head(StatusCode::OK, &headers).is_none());
    /// ```
    pub fn from_response_head(status: StatusCode, headers: &HeaderMap) -> Option<Self> {
        if let Some(code) = code::grpc_status(headers) {
            return Some(Self {
                code,
                source: Source::TrailersOnly,
                message: grpc_message(headers),
                rejected_by: None,
            });
        }
        if status != StatusCode::OK {
            return Some(Self::new(
                code::from_http_status(status),
                Source::HttpStatus,
            ));
        }
        None
    }

    /// Like [`Outcome::from_response_head`], and a trailers-only response a Palisade layer
    /// made (it carries a [`LocalRejection`] in its extensions, as every [`Rejection`]'s
    /// response does) is marked with that layer: [`Outcome::rejected_by`]. The extensions are
    /// read only for trailers-only responses.
    ///
    /// ```
    /// use palisade_core::{Code, Outcome, Rejection};
    ///
    /// let local = Rejection::new(Code::ResourceExhausted, "slow down")
    ///     .by("ratelimit")
    ///     .into_response::<()>();
    /// let outcome = Outcome::from_response(&local).unwrap();
    /// assert_eq!(outcome.rejected_by(), Some("ratelimit"));
    ///
    /// // The same status from the backend, as read off the wire, is not local.
    /// let mut remote = local;
    /// remote.extensions_mut().clear();
    /// assert!(!Outcome::from_response(&remote).unwrap().is_local());
    /// ```
    ///
    /// [`Rejection`]: crate::Rejection
    pub fn from_response<B>(response: &Response<B>) -> Option<Self> {
        let mut outcome = Self::from_response_head(response.status(), response.headers())?;
        if outcome.source == Source::TrailersOnly {
            outcome.rejected_by = LocalRejection::of(response).map(LocalRejection::layer);
        }
        Some(outcome)
    }

    /// The outcome of an error, from the inner service or from a body.
    ///
    /// A [`tonic::Status`] — the error itself, or found in the source chain of a boxed error —
    /// gives its code and message; any other error gets `fallback` (usually `Unknown` on a
    /// server, `Unavailable` on a client, where errors are transport failures).
    pub fn from_error<E: Any>(error: &E, source: Source, fallback: Code) -> Self {
        match find_status(error) {
            Some(status) => {
                Self::new(status.code(), source).with_message(status.message().to_owned())
            }
            None => {
                let outcome = Self::new(fallback, source);
                match (error as &dyn Any).downcast_ref::<BoxError>() {
                    Some(boxed) => outcome.with_message(boxed.to_string()),
                    None => outcome,
                }
            }
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Where the code was read from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Whether the code is `Ok`.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// The Palisade layer that answered the call itself (`"ratelimit"`, `"breaker"`,
    /// `"jwt"`, …), when the response was a [`Rejection`](crate::Rejection) made in this
    /// process rather than the backend's answer; `None` for everything read off the wire.
    ///
    /// A breaker never counts such an outcome as the backend's failure, and a retry never
    /// replays it. The mark lives in the response's extensions, so it does not cross the
    /// network: a server's rejection reaches its client as an ordinary status.
    pub fn rejected_by(&self) -> Option<&'static str> {
        self.rejected_by
    }

    /// Whether a Palisade layer answered the call itself; see [`Outcome::rejected_by`].
    pub fn is_local(&self) -> bool {
        self.rejected_by.is_some()
    }

    /// The status message, percent-decoded (invalid UTF-8 replaced), if there is one.
    pub fn message(&self) -> Option<Cow<'_, str>> {
        match self.message.as_ref()? {
            Message::Header(value) => Some(percent_decode(value.as_bytes()).decode_utf8_lossy()),
            Message::Text(text) => Some(Cow::Borrowed(text)),
        }
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("code", &self.code)
            .field("source", &self.source)
            .field("message", &self.message())
            .field("rejected_by", &self.rejected_by)
            .finish()
    }
}

fn grpc_message(headers: &HeaderMap) -> Option<Message> {
    crate::headers::find(headers, &crate::headers::GRPC_MESSAGE)
        .filter(|value| !value.is_empty())
        .map(|value| Message::Header(value.clone()))
}

type BoxError = Box<dyn Error + Send + Sync>;

/// Finds a [`tonic::Status`] in an error: the error itself, or in the source chain of a boxed
/// error (`Box<dyn Error + Send + Sync>`, what most tower stacks use).
///
/// ```
/// use palisade_core::{outcome::find_status, Code};
///
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(tonic::Status::aborted("x"));
/// assert_eq!(find_status(&boxed).unwrap().code(), Code::Aborted);
/// assert!(find_status(&std::io::Error::other("x")).is_none());
/// ```
pub fn find_status<E: Any>(error: &E) -> Option<&Status> {
    let any = error as &dyn Any;
    if let Some(status) = any.downcast_ref::<Status>() {
        return Some(status);
    }
    let mut next: Option<&(dyn Error + 'static)> = match any.downcast_ref::<BoxError>() {
        Some(boxed) => Some(boxed.as_ref()),
        None => None,
    };
    while let Some(error) = next {
        if let Some(status) = error.downcast_ref::<Status>() {
            return Some(status);
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_percent_encoding_is_kept_lossily() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        trailers.insert("grpc-message", HeaderValue::from_static("bad%zz%e9%ff%"));
        let outcome = Outcome::from_trailers(&trailers);
        assert_eq!(outcome.code(), Code::Internal);
        assert_eq!(outcome.message().unwrap(), "bad%zz\u{fffd}\u{fffd}%");
    }

    #[test]
    fn trailers_without_status_are_unknown() {
        let outcome = Outcome::from_trailers(&HeaderMap::new());
        assert_eq!(outcome.code(), Code::Unknown);
        assert_eq!(outcome.source(), Source::MissingStatus);
    }

    #[test]
    fn errors_without_status_take_the_fallback() {
        let err = std::io::Error::other("boom");
        let outcome = Outcome::from_error(&err, Source::ServiceError, Code::Unavailable);
        assert_eq!(outcome.code(), Code::Unavailable);
        let boxed: BoxError = Box::new(err);
        let outcome = Outcome::from_error(&boxed, Source::ServiceError, Code::Unknown);
        assert_eq!(
            (outcome.code(), outcome.message().unwrap()),
            (Code::Unknown, "boom".into())
        );
    }
}
