//! Trailers-only gRPC rejections: how every Palisade layer says no.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Response, header::CONTENT_TYPE};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::{
    code::{self, Code},
    headers::{GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS},
};

/// What gRPC percent-encodes in `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// a percent-encoded `grpc-message`, and optional extra metadata — the form a gRPC client
/// reads as a `Status`, unlike an HTTP 401 or 429.
///
/// It is built once (the message encoded once) and turned into a response for any body type
/// with `Default`, so layers reject with a response and keep the inner service's error type.
///
/// # Example
///
/// ```
/// use http::HeaderValue;
/// use palisade_core::{Code, Rejection};
///
/// let rejection = Rejection::new(Code::ResourceExhausted, "rate limit exceeded")
///     .with_metadata("grpc-retry-pushback-ms", HeaderValue::from_static("250"));
/// let response = rejection.to_response::<String>();
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["grpc-status"], "8");
/// assert_eq!(response.headers()["grpc-message"], "rate limit exceeded");
/// assert_eq!(response.headers()["grpc-retry-pushback-ms"], "250");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    code: Code,
    message: Option<HeaderValue>,
    metadata: HeaderMap,
}

impl Rejection {
    /// A rejection with a code and a message (percent-encoded here, once).
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: encode_message(message.into()),
            metadata: HeaderMap::new(),
        }
    }

    /// Adds a metadata entry to the response headers (`grpc-retry-pushback-ms`,
    /// `x-ratelimit-remaining`, …). Reserved gRPC headers cannot be overwritten.
    #[must_use]
    pub fn with_metadata(mut self, name: impl TryInto<HeaderName>, value: HeaderValue) -> Self {
        self.insert_metadata(name, value);
        self
    }

    /// Adds a metadata entry in place; see [`Rejection::with_metadata`].
    pub fn insert_metadata(&mut self, name: impl TryInto<HeaderName>, value: HeaderValue) {
        if let Ok(name) = name.try_into()
            && ![GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS, CONTENT_TYPE].contains(&name)
        {
            self.metadata.insert(name, value);
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The extra metadata.
    pub fn metadata(&self) -> &HeaderMap {
        &self.metadata
    }

    /// The response, leaving the rejection to be used again.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.reserve(3 + self.metadata.len());
        for (name, value) in &self.metadata {
            headers.append(name.clone(), value.clone());
        }
        self.write_status(headers);
        response
    }

    /// The response.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        *headers = self.metadata;
        headers.insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
        headers.insert(GRPC_STATUS, code::header_value(self.code));
        if let Some(message) = self.message {
            headers.insert(GRPC_MESSAGE, message);
        }
        response
    }

    /// Writes the rejection into the trailers of a stream that has already sent its headers:
    /// its metadata, `grpc-status`, and its `grpc-message` (removing one the trailers had).
    pub fn write_trailers(&self, trailers: &mut HeaderMap) {
        for (name, value) in &self.metadata {
            trailers.insert(name.clone(), value.clone());
        }
        trailers.insert(GRPC_STATUS, code::header_value(self.code));
        match &self.message {
            Some(message) => {
                trailers.insert(GRPC_MESSAGE, message.clone());
            }
            None => {
                trailers.remove(GRPC_MESSAGE);
            }
        }
    }

    fn write_status(&self, headers: &mut HeaderMap) {
        headers.insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
        headers.insert(GRPC_STATUS, code::header_value(self.code));
        if let Some(message) = &self.message {
            headers.insert(GRPC_MESSAGE, message.clone());
        }
    }
}

/// Shorthand for `Rejection::new(code, message).into_response()`.
pub fn reject<B: Default>(code: Code, message: impl Into<Cow<'static, str>>) -> Response<B> {
    Rejection::new(code, message).into_response()
}

fn encode_message(message: Cow<'static, str>) -> Option<HeaderValue> {
    if message.is_empty() {
        return None;
    }
    let encoded: Cow<'_, str> = utf8_percent_encode(&message, GRPC_MESSAGE_ENCODE).into();
    Some(match (&message, encoded) {
        (Cow::Borrowed(text), Cow::Borrowed(_)) => HeaderValue::from_static(text),
        (_, encoded) => HeaderValue::from_str(&encoded)
            .expect("percent-encoded text is visible ASCII and a valid header value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn message_round_trips_through_percent_encoding() {
        for message in ["plain", "50% off", "ünïcödé ✓", "line\nbreak\r\t", "\u{7f}"] {
            let response = reject::<()>(Code::Internal, message.to_owned());
            let outcome =
                Outcome::from_response_head(response.status(), response.headers()).unwrap();
            assert_eq!(outcome.code(), Code::Internal);
            assert_eq!(outcome.message().unwrap(), message);
        }
    }

    #[test]
    fn trailers_take_the_status_and_lose_a_stale_message() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("fine"));
        Rejection::new(Code::ResourceExhausted, "")
            .with_metadata("grpc-retry-pushback-ms", HeaderValue::from_static("5"))
            .write_trailers(&mut trailers);
        let outcome = Outcome::from_trailers(&trailers);
        assert_eq!(
            (outcome.code(), outcome.message()),
            (Code::ResourceExhausted, None)
        );
        assert_eq!(trailers["grpc-retry-pushback-ms"], "5");
    }

    #[test]
    fn metadata_cannot_overwrite_the_status() {
        let response = Rejection::new(Code::Unavailable, "circuit open")
            .with_metadata("grpc-status", HeaderValue::from_static("0"))
            .with_metadata("bad header name", HeaderValue::from_static("x"))
            .into_response::<()>();
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers().len(), 3);
    }
}
