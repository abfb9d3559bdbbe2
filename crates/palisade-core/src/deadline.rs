//! The caller's deadline, from the `grpc-timeout` request header.

use std::time::Duration;

use http::HeaderMap;

/// Reads `grpc-timeout` (up to 8 ASCII digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
/// Anything malformed is no deadline.
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, HeaderValue};
/// use palisade_core::deadline::grpc_timeout;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
/// assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(250)));
/// headers.insert("grpc-timeout", HeaderValue::from_static("123456789S"));
/// assert_eq!(grpc_timeout(&headers), None);
/// ```
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse(crate::headers::find(headers, &crate::headers::GRPC_TIMEOUT)?.as_bytes())
}

fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn units_and_malformed_values() {
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"10", b"-1S", b"1x", b"1 S", b"\xff"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
