//! gRPC status codes: Go's names, sets of codes, and reading `grpc-status`.

use std::fmt;

use http::{HeaderMap, HeaderValue, StatusCode};
pub use tonic::Code;

/// Every gRPC code, in numeric order.
pub const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

const GO_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const NUMBERS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The name Go's gRPC gives a code (`OK`, `Canceled`, `InvalidArgument`, …), as
/// go-grpc-prometheus and go-grpc-middleware write it in labels and log fields.
///
/// ```
/// use palisade_core::{code::go_name, Code};
/// assert_eq!(go_name(Code::Ok), "OK");
/// assert_eq!(go_name(Code::Cancelled), "Canceled");
/// assert_eq!(go_name(Code::ResourceExhausted), "ResourceExhausted");
/// ```
pub const fn go_name(code: Code) -> &'static str {
    GO_NAMES[code as usize]
}

/// The code's number as a string (`"0"` … `"16"`), as written in `grpc-status`.
pub const fn number_str(code: Code) -> &'static str {
    NUMBERS[code as usize]
}

/// The `grpc-status` header value for a code, without allocating.
pub fn header_value(code: Code) -> HeaderValue {
    HeaderValue::from_static(number_str(code))
}

/// Reads `grpc-status` from a header map (response headers or trailers).
///
/// `None` when there is no `grpc-status`; a value that is not a code from 0 to 16
/// (`"abc"`, `"17"`, `"-1"`) reads as [`Code::Unknown`], as gRPC clients treat it.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use palisade_core::{code::grpc_status, Code};
///
/// let mut trailers = HeaderMap::new();
/// assert_eq!(grpc_status(&trailers), None);
/// trailers.insert("grpc-status", HeaderValue::from_static("5"));
/// assert_eq!(grpc_status(&trailers), Some(Code::NotFound));
/// trailers.insert("grpc-status", HeaderValue::from_static("99"));
/// assert_eq!(grpc_status(&trailers), Some(Code::Unknown));
/// ```
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    crate::headers::find(headers, &crate::headers::GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// The gRPC code for an HTTP response that carries no `grpc-status`, per the gRPC spec's
/// HTTP to gRPC status mapping.
///
/// ```
/// use http::StatusCode;
/// use palisade_core::{code::from_http_status, Code};
/// assert_eq!(from_http_status(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
/// assert_eq!(from_http_status(StatusCode::NOT_FOUND), Code::Unimplemented);
/// assert_eq!(from_http_status(StatusCode::IM_A_TEAPOT), Code::Unknown);
/// ```
pub fn from_http_status(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A set of gRPC codes, as a bitset: which codes are failures for a breaker, which are
/// server errors for span status or log level.
///
/// # Example
///
/// ```
/// use palisade_core::{Code, CodeSet};
///
/// let failures = CodeSet::of(&[Code::Unavailable, Code::Internal]);
/// assert!(failures.contains(Code::Unavailable));
/// assert!(!failures.contains(Code::Ok));
/// assert!(CodeSet::SERVER_ERRORS.contains(Code::DataLoss));
/// assert_eq!(failures.with(Code::Ok).len(), 3);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodeSet(u32);

impl CodeSet {
    /// No code.
    pub const EMPTY: CodeSet = CodeSet(0);
    /// Every code.
    pub const ALL: CodeSet = CodeSet((1 << 17) - 1);
    /// Every code but `Ok`.
    pub const NOT_OK: CodeSet = CodeSet(((1 << 17) - 1) & !1);
    /// The codes OpenTelemetry's RPC conventions call server errors: Unknown, DeadlineExceeded,
    /// Unimplemented, Internal, Unavailable, DataLoss.
    pub const SERVER_ERRORS: CodeSet = CodeSet::of(&[
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]);

    /// The set of the given codes.
    pub const fn of(codes: &[Code]) -> CodeSet {
        let mut bits = 0;
        let mut i = 0;
        while i < codes.len() {
            bits |= 1 << codes[i] as u32;
            i += 1;
        }
        CodeSet(bits)
    }

    /// Whether the set holds `code`.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & (1 << code as u32) != 0
    }

    /// This set and `code`.
    #[must_use]
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | 1 << code as u32)
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: Code) -> CodeSet {
        CodeSet(self.0 & !(1 << code as u32))
    }

    /// The codes in either set.
    #[must_use]
    pub const fn union(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 | other.0)
    }

    /// The codes not in this set.
    #[must_use]
    pub const fn complement(self) -> CodeSet {
        CodeSet(!self.0 & Self::ALL.0)
    }

    /// How many codes the set holds.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in the set, in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        ALL_CODES
            .into_iter()
            .filter(move |code| self.contains(*code))
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        iter.into_iter().fold(CodeSet::EMPTY, CodeSet::with)
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(go_name)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_numbers() {
        for (i, code) in ALL_CODES.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(Code::from_bytes(number_str(*code).as_bytes()), *code);
        }
        assert_eq!(go_name(Code::Unauthenticated), "Unauthenticated");
    }

    #[test]
    fn bad_grpc_status_values_read_as_unknown() {
        for bad in ["", "abc", "17", "-1", "0x1", " 0", "00", "4294967296"] {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", HeaderValue::from_str(bad).unwrap());
            assert_eq!(grpc_status(&headers), Some(Code::Unknown), "{bad:?}");
        }
    }

    #[test]
    fn set_operations() {
        assert_eq!(CodeSet::ALL.len(), 17);
        assert_eq!(CodeSet::NOT_OK.len(), 16);
        assert!(!CodeSet::NOT_OK.contains(Code::Ok));
        assert_eq!(CodeSet::SERVER_ERRORS.complement().len(), 11);
        let set: CodeSet = [Code::Aborted, Code::Aborted].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_eq!(format!("{set:?}"), "{\"Aborted\"}");
        assert!(set.without(Code::Aborted).is_empty());
    }
}
