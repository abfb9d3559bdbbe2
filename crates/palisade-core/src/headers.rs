//! The gRPC header names, as constants: looking a header up by a `HeaderName` skips the
//! parsing a `&str` name costs on every call.

use http::HeaderName;

/// Metadata that carries credentials: never logged, recorded on a span or used as a label,
/// whatever a layer's allowlist says (`authorization`, `proxy-authorization`, `cookie`,
/// `set-cookie`).
///
/// ```
/// use palisade_core::headers::{SECRET, is_secret};
///
/// assert!(is_secret(&http::header::AUTHORIZATION));
/// assert!(!is_secret(&http::HeaderName::from_static("x-request-id")));
/// assert_eq!(SECRET.len(), 4);
/// ```
pub const SECRET: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
];

/// Whether `name` is one of the [`SECRET`] headers.
pub fn is_secret(name: &HeaderName) -> bool {
    SECRET.contains(name)
}

/// `grpc-status`: the RPC's code, in trailers or trailers-only headers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the percent-encoded status message.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-status-details-bin`: the encoded `google.rpc.Status`.
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// `grpc-timeout`: the caller's deadline.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-retry-pushback-ms`: how long a client should wait before retrying.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Small header maps (trailers, gRPC response headers) are faster to scan than to hash:
/// `HeaderMap::get` hashes the name on every call, a scan compares a few short names.
const SCAN_UP_TO: usize = 8;

/// Looks `name` up in `headers`, scanning small maps instead of hashing.
pub(crate) fn find<'a>(
    headers: &'a http::HeaderMap,
    name: &HeaderName,
) -> Option<&'a http::HeaderValue> {
    if headers.len() <= SCAN_UP_TO {
        headers
            .iter()
            .find_map(|(key, value)| (key == name).then_some(value))
    } else {
        headers.get(name)
    }
}
