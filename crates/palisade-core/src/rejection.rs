//! Trailers-only gRPC rejections: how every Palisade layer says no.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Response, header::CONTENT_TYPE};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::{
    code::{self, Code},
    headers::{GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GRPC_STATUS_DETAILS},
};

/// What gRPC percent-encodes in `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// The mark every [`Rejection`]'s response carries in its [`http::Extensions`]: the response
/// was made in this process by the Palisade layer it names, not received from the backend.
///
/// [`ObservedFuture`](crate::ObservedFuture) reads it from trailers-only responses into
/// [`Outcome::rejected_by`](crate::Outcome::rejected_by), so a breaker never counts another
/// layer's rejection as the backend's failure, wherever the layers sit. Extensions never
/// cross the network: a server's rejection reaches the client as an ordinary status.
///
/// ```
/// use palisade_core::{Code, Rejection, rejection::LocalRejection};
///
/// let response = Rejection::new(Code::Unavailable, "circuit open").by("breaker").into_response::<()>();
/// assert_eq!(LocalRejection::of(&response).map(LocalRejection::layer), Some("breaker"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalRejection {
    layer: &'static str,
}

impl LocalRejection {
    /// The name a [`Rejection`] not named with [`Rejection::by`] carries.
    pub const UNNAMED: &'static str = "palisade";

    /// A mark naming `layer`.
    pub const fn new(layer: &'static str) -> Self {
        Self { layer }
    }

    /// The layer that made the response: `"ratelimit"`, `"breaker"`, `"jwt"`, …
    pub const fn layer(self) -> &'static str {
        self.layer
    }

    /// The mark of a response, if a Palisade layer made it.
    pub fn of<B>(response: &Response<B>) -> Option<Self> {
        response.extensions().get::<Self>().copied()
    }
}

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// a percent-encoded `grpc-message`, and optional extra metadata — the form a gRPC client
/// reads as a `Status`, unlike an HTTP 401 or 429.
///
/// It is built once (the message encoded once) and turned into a response for any body type
/// with `Default`, so layers reject with a response and keep the inner service's error type.
/// Every response it makes carries a [`LocalRejection`] naming the layer ([`Rejection::by`]),
/// so observers can tell it from the backend's answers ([`Outcome::rejected_by`]).
///
/// [`Outcome::rejected_by`]: crate::Outcome::rejected_by
///
/// # Example
///
/// ```
/// use http::HeaderValue;
/// use palisade_core::{Code, Rejection};
///
/// let rejection = Rejection::new(Code::ResourceExhausted, "rate limit exceeded")
///     .by("ratelimit")
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
    layer: &'static str,
}

impl Rejection {
    /// A rejection with a code and a message (percent-encoded here, once).
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: encode_message(message.into()),
            metadata: HeaderMap::new(),
            layer: LocalRejection::UNNAMED,
        }
    }

    /// Names the layer that rejects (`"ratelimit"`, `"breaker"`, `"jwt"`, …): its responses'
    /// [`LocalRejection`] mark and [`Outcome::rejected_by`](crate::Outcome::rejected_by).
    /// Unnamed, it is [`LocalRejection::UNNAMED`].
    #[must_use]
    pub fn by(mut self, layer: &'static str) -> Self {
        self.layer = layer;
        self
    }

    /// The name of the layer that rejects; see [`Rejection::by`].
    pub fn layer(&self) -> &'static str {
        self.layer
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
            .extensions_mut()
            .insert(LocalRejection::new(self.layer));
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
            .extensions_mut()
            .insert(LocalRejection::new(self.layer));
        response
    }

    /// Writes the rejection into the trailers of a stream that has already sent its headers:
    /// its metadata, `grpc-status`, and its `grpc-message`. What the trailers had that belongs
    /// to the status they replace goes: `grpc-message`, `grpc-status-details-bin` (rich error
    /// details that would contradict the new status) and `grpc-retry-pushback-ms` (unless the
    /// rejection sets its own).
    pub fn write_trailers(&self, trailers: &mut HeaderMap) {
        trailers.remove(GRPC_STATUS_DETAILS);
        trailers.remove(GRPC_RETRY_PUSHBACK_MS);
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

/// Shorthand for `Rejection::new(code, message).into_response()`: marked
/// [`LocalRejection::UNNAMED`]; name the layer with [`Rejection::by`].
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
    fn trailers_lose_stale_details_and_pushback() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        trailers.insert(
            GRPC_STATUS_DETAILS,
            HeaderValue::from_static("CAUSBm5vIHN1Y2g"),
        );
        trailers.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("-1"));
        trailers.insert("x-handler", HeaderValue::from_static("kept"));
        Rejection::new(Code::ResourceExhausted, "rate limit exceeded")
            .write_trailers(&mut trailers);
        assert_eq!(trailers[GRPC_STATUS], "8");
        assert!(trailers.get(GRPC_STATUS_DETAILS).is_none(), "{trailers:?}");
        assert!(
            trailers.get(GRPC_RETRY_PUSHBACK_MS).is_none(),
            "{trailers:?}"
        );
        assert_eq!(trailers["x-handler"], "kept");

        // A pushback of the rejection's own replaces the handler's.
        trailers.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("-1"));
        Rejection::new(Code::ResourceExhausted, "")
            .with_metadata(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("250"))
            .write_trailers(&mut trailers);
        assert_eq!(trailers[GRPC_RETRY_PUSHBACK_MS], "250");
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
