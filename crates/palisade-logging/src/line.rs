//! The access log's JSON line, written by hand into a reused buffer: no `tracing` event, no
//! field visitor, no allocation per field, integers by `itoa`, and strings escaped in place.

use std::{cell::RefCell, net::SocketAddr, time::SystemTime};

thread_local! {
    /// Each thread's line, reused from one RPC to the next.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Runs `f` with this thread's empty line buffer (or a fresh one, if the thread's is in use or
/// gone).
pub(crate) fn with_line(f: impl FnOnce(&mut Vec<u8>)) {
    let mut f = Some(f);
    let _ = LINE.try_with(|cell| {
        if let Ok(mut line) = cell.try_borrow_mut() {
            line.clear();
            if let Some(f) = f.take() {
                f(&mut line);
            }
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(512);
            }
        }
    });
    if let Some(f) = f {
        f(&mut Vec::new());
    }
}

/// A JSON object being written into a line.
pub(crate) struct Json<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Json<'a> {
    /// Opens the object with `"timestamp":"…"` (RFC 3339, µs, UTC, as `tracing-subscriber`'s
    /// JSON formatter writes it).
    pub(crate) fn open(buf: &'a mut Vec<u8>, now: SystemTime) -> Self {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339(buf, now, 6);
        buf.push(b'"');
        Json { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// `"key":"value"`, the value escaped.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        string(self.buf, value);
    }

    /// `"key":"value"` for a value known to need no escaping (ASCII letters, digits, `_`).
    pub(crate) fn plain(&mut self, key: &str, value: &str) {
        self.key(key);
        self.buf.push(b'"');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(b'"');
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds with µs precision, as a JSON number (`12.345`).
    pub(crate) fn millis(&mut self, key: &str, micros: u64) {
        self.key(key);
        let mut digits = itoa::Buffer::new();
        self.buf
            .extend_from_slice(digits.format(micros / 1000).as_bytes());
        let frac = micros % 1000;
        self.buf.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    /// `"key":"…"`, an RFC 3339 time with milliseconds.
    pub(crate) fn time_millis(&mut self, key: &str, time: SystemTime) {
        self.key(key);
        self.buf.push(b'"');
        rfc3339(self.buf, time, 3);
        self.buf.push(b'"');
    }

    /// `"key":"ip:port"`.
    pub(crate) fn socket(&mut self, key: &str, addr: &SocketAddr) {
        self.key(key);
        self.buf.push(b'"');
        match addr {
            SocketAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b'.');
                    }
                    self.buf.extend_from_slice(digits.format(octet).as_bytes());
                }
                self.buf.push(b':');
                self.buf
                    .extend_from_slice(digits.format(v4.port()).as_bytes());
            }
            // Rare enough for `Display`; nothing in it needs escaping.
            SocketAddr::V6(v6) => {
                use std::io::Write as _;
                let _ = write!(self.buf, "{v6}");
            }
        }
        self.buf.push(b'"');
    }

    /// Closes the object and the line.
    pub(crate) fn close(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
pub(crate) fn string(buf: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(byte >> 4)]);
                buf.push(HEX[usize::from(byte & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(escape);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` (`digits` = 3) or `.ffffffZ` (6), UTC. Times before 1970 are
/// written as 1970's first instant.
fn rfc3339(buf: &mut Vec<u8>, time: SystemTime, digits: u32) {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    if year < 10_000 {
        four(buf, year as u32);
    } else {
        buf.extend_from_slice(itoa::Buffer::new().format(year).as_bytes());
    }
    buf.push(b'-');
    two(buf, month);
    buf.push(b'-');
    two(buf, day);
    buf.push(b'T');
    two(buf, (of_day / 3600) as u32);
    buf.push(b':');
    two(buf, (of_day / 60 % 60) as u32);
    buf.push(b':');
    two(buf, (of_day % 60) as u32);
    buf.push(b'.');
    let mut frac = if digits == 3 {
        since.subsec_millis()
    } else {
        since.subsec_micros()
    };
    let mut out = [b'0'; 6];
    for slot in out[..digits as usize].iter_mut().rev() {
        *slot = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    buf.extend_from_slice(&out[..digits as usize]);
    buf.push(b'Z');
}

fn two(buf: &mut Vec<u8>, n: u32) {
    buf.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

fn four(buf: &mut Vec<u8>, n: u32) {
    two(buf, n / 100);
    two(buf, n % 100);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_match_humantime() {
        for secs in [
            0u64,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            let time = UNIX_EPOCH + Duration::new(secs, 123_456_789);
            assert_eq!(
                text(|b| rfc3339(b, time, 3)),
                humantime::format_rfc3339_millis(time).to_string()
            );
            assert_eq!(
                text(|b| rfc3339(b, time, 6)),
                humantime::format_rfc3339_micros(time).to_string()
            );
        }
        // Far past humantime's range, still a well-formed year.
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(text(|b| rfc3339(b, far, 3)).starts_with("14645-"));
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for value in [
            "plain",
            "q\"uote\\",
            "tab\tnl\n\r",
            "\u{1}\u{1f}",
            "héllo ☃",
        ] {
            let written = text(|b| string(b, value));
            assert_eq!(written, serde_json::to_string(value).unwrap());
        }
    }

    #[test]
    fn millis_keep_microseconds() {
        let line = text(|b| {
            let mut json = Json::open(b, UNIX_EPOCH);
            json.millis("t", 12_345);
            json.millis("u", 7);
            json.close();
        });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["t"], 12.345);
        assert_eq!(value["u"], 0.007);
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
    }
}
