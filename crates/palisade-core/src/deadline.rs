//! The caller's deadline, in the `grpc-timeout` request header: [`grpc_timeout`] reads it,
//! [`timeout_value`] writes it.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

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

/// The `grpc-timeout` value for a duration: the finest unit (`n`, `u`, `m`, `S`, `M`, `H`) in
/// which it fits the header's 8 digits, rounded down, so a deadline written and read back is
/// never later than the one given (at most 100 000 000 hours: longer is written as that).
///
/// ```
/// use std::time::Duration;
/// use palisade_core::deadline::timeout_value;
///
/// assert_eq!(timeout_value(Duration::from_millis(250)), "250000u");
/// assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
/// assert_eq!(timeout_value(Duration::ZERO), "0n");
/// ```
pub fn timeout_value(timeout: Duration) -> HeaderValue {
    const UNITS: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let nanos = timeout.as_nanos();
    let (count, unit) = UNITS
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(count, _)| count < 100_000_000)
        .unwrap_or((99_999_999, b'H'));
    // At most 8 digits and the unit, written without a format.
    let mut buf = [0u8; 9];
    let mut at = buf.len() - 1;
    buf[at] = unit;
    let mut left = u32::try_from(count).expect("fewer than 100 000 000");
    loop {
        at -= 1;
        buf[at] = b'0' + u8::try_from(left % 10).expect("a digit");
        left /= 10;
        if left == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[at..]).expect("digits and a unit letter")
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
    use super::{parse, timeout_value};
    use std::time::Duration;

    #[test]
    fn timeouts_keep_eight_digits_and_round_down() {
        let value = |d| timeout_value(d).to_str().unwrap().to_owned();
        assert_eq!(value(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(value(Duration::from_nanos(100_000_001)), "100000u");
        assert_eq!(value(Duration::from_millis(1500)), "1500000u");
        assert_eq!(value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(value(Duration::ZERO), "0n");
        assert_eq!(value(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1),
            Duration::from_secs(5),
            Duration::from_secs(86_400 * 30),
            Duration::from_secs(3_600 * 100_000_000 - 1),
        ] {
            let parsed = parse(timeout_value(d).as_bytes()).unwrap();
            assert!(
                parsed <= d && d - parsed < d / 1000 + Duration::from_nanos(1),
                "{d:?} {parsed:?}"
            );
        }
    }

    #[test]
    fn units_and_malformed_values() {
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"10", b"-1S", b"1x", b"1 S", b"\xff"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
