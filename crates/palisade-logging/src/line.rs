//! The access log's JSON line, written by hand into a reused buffer: no `tracing` event, no
//! field visitor, no allocation per field, integers by `itoa`, and strings escaped in place.
//! What is the same on every line is written whole: each key with its punctuation, the level
//! and message, each code's field, a known method's fields (pre-rendered per method by
//! [`method_fields`]), and the date and time to the second (formatted once per second per
//! thread).

use std::{cell::RefCell, net::SocketAddr, sync::LazyLock, time::Duration};

use palisade_core::{Code, code::ALL_CODES, code::go_name};
use tracing::Level;

/// A key with its punctuation, `,"name":`, for [`Json`]'s writers.
#[derive(Clone, Copy)]
pub(crate) struct Key(&'static str);

/// `,"name":` for a field name known to need no escaping.
macro_rules! key {
    ($name:literal) => {
        $crate::line::Key::new(concat!(",\"", $name, "\":"))
    };
}
pub(crate) use key;

impl Key {
    pub(crate) const fn new(punctuated: &'static str) -> Self {
        Key(punctuated)
    }
}

/// Each thread's line, reused from one RPC to the next, and its clock's last seconds.
struct Line {
    buf: Vec<u8>,
    seconds: Seconds,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: Vec::with_capacity(512),
            seconds: Seconds::default(),
        }
    }
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::new());
}

/// Runs `f` with this thread's empty line (or a fresh one, if the thread's is in use or gone).
pub(crate) fn with_line(f: impl FnOnce(&mut Vec<u8>, &mut Seconds)) {
    let mut f = Some(f);
    let _ = LINE.try_with(|cell| {
        if let Ok(mut line) = cell.try_borrow_mut() {
            let line = &mut *line;
            line.buf.clear();
            if let Some(f) = f.take() {
                f(&mut line.buf, &mut line.seconds);
            }
            if line.buf.capacity() > 64 * 1024 {
                line.buf = Vec::with_capacity(512);
            }
        }
    });
    if let Some(f) = f {
        let mut line = Line::new();
        f(&mut line.buf, &mut line.seconds);
    }
}

/// The last two seconds formatted (`YYYY-MM-DDTHH:MM:SS`), by seconds since the epoch: a
/// line's time and its deadline each hit one, from one call to the next.
#[derive(Default)]
pub(crate) struct Seconds {
    slots: [Option<(u64, [u8; 19])>; 2],
    /// The slot the next miss replaces.
    next: usize,
}

impl Seconds {
    fn get(&mut self, secs: u64) -> &[u8; 19] {
        let hit = self
            .slots
            .iter()
            .position(|slot| slot.is_some_and(|(at, _)| at == secs));
        let index = match hit {
            Some(index) => index,
            None => {
                let index = self.next;
                self.next = 1 - index;
                self.slots[index] = Some((secs, format_second(secs)));
                index
            }
        };
        match &self.slots[index] {
            Some((_, text)) => text,
            None => unreachable!("the slot was just filled"),
        }
    }
}

/// `"level":"…","message":"…"` with the quote that closes the timestamp before it.
fn level_and_message(level: Level, finished: bool) -> &'static str {
    macro_rules! pair {
        ($level:literal) => {
            if finished {
                concat!(
                    "\",\"level\":\"",
                    $level,
                    "\",\"message\":\"finished call\""
                )
            } else {
                concat!("\",\"level\":\"", $level, "\",\"message\":\"started call\"")
            }
        };
    }
    if level == Level::ERROR {
        pair!("ERROR")
    } else if level == Level::WARN {
        pair!("WARN")
    } else if level == Level::INFO {
        pair!("INFO")
    } else if level == Level::DEBUG {
        pair!("DEBUG")
    } else {
        pair!("TRACE")
    }
}

/// `,"grpc.code":"…"` for every code, written once.
static CODE_FIELDS: LazyLock<[Box<[u8]>; 17]> = LazyLock::new(|| {
    ALL_CODES.map(|code| {
        let mut buf = Vec::new();
        plain(&mut buf, key!("grpc.code"), go_name(code));
        buf.into_boxed_slice()
    })
});

/// A method's fields as every line of a layer writes them, in order: `grpc.component`,
/// `grpc.service`, `grpc.method` and, when known, `grpc.method_type`.
pub(crate) fn method_fields(
    component: &str,
    service: &str,
    method: &str,
    method_type: Option<&str>,
) -> Box<[u8]> {
    let mut buf = Vec::new();
    write_method_fields(&mut buf, component, service, method, method_type);
    buf.into_boxed_slice()
}

fn write_method_fields(
    buf: &mut Vec<u8>,
    component: &str,
    service: &str,
    method: &str,
    method_type: Option<&str>,
) {
    plain(buf, key!("grpc.component"), component);
    buf.extend_from_slice(key!("grpc.service").0.as_bytes());
    string(buf, service);
    buf.extend_from_slice(key!("grpc.method").0.as_bytes());
    string(buf, method);
    if let Some(method_type) = method_type {
        plain(buf, key!("grpc.method_type"), method_type);
    }
}

fn plain(buf: &mut Vec<u8>, key: Key, value: &str) {
    buf.extend_from_slice(key.0.as_bytes());
    buf.push(b'"');
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'"');
}

/// A JSON object being written into a line.
pub(crate) struct Json<'a> {
    buf: &'a mut Vec<u8>,
    seconds: &'a mut Seconds,
}

impl<'a> Json<'a> {
    /// Opens the object with `"timestamp":"…"` (`now`, the time since the epoch, in RFC 3339
    /// with µs, UTC, as `tracing-subscriber`'s JSON formatter writes it), `"level"` and
    /// `"message"` (`finished call` or `started call`).
    pub(crate) fn open(
        buf: &'a mut Vec<u8>,
        seconds: &'a mut Seconds,
        now: Duration,
        level: Level,
        finished: bool,
    ) -> Self {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339(buf, seconds, now, 6);
        buf.extend_from_slice(level_and_message(level, finished).as_bytes());
        Json { buf, seconds }
    }

    /// Bytes already rendered as fields (`,"key":value…`).
    pub(crate) fn raw(&mut self, fields: &[u8]) {
        self.buf.extend_from_slice(fields);
    }

    /// The method's fields, written here (see [`method_fields`]).
    pub(crate) fn method(
        &mut self,
        component: &str,
        service: &str,
        method: &str,
        method_type: Option<&str>,
    ) {
        write_method_fields(self.buf, component, service, method, method_type);
    }

    /// `"grpc.code":"…"`.
    pub(crate) fn code(&mut self, code: Code) {
        self.buf.extend_from_slice(&CODE_FIELDS[code as usize]);
    }

    /// `"key":"value"`, the value escaped.
    pub(crate) fn str(&mut self, key: Key, value: &str) {
        self.buf.extend_from_slice(key.0.as_bytes());
        string(self.buf, value);
    }

    /// `"key":"value"` for a value known to need no escaping (ASCII letters, digits, `_`).
    pub(crate) fn plain(&mut self, key: Key, value: &[u8]) {
        self.buf.extend_from_slice(key.0.as_bytes());
        self.buf.push(b'"');
        self.buf.extend_from_slice(value);
        self.buf.push(b'"');
    }

    pub(crate) fn u64(&mut self, key: Key, value: u64) {
        self.buf.extend_from_slice(key.0.as_bytes());
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds with µs precision, as a JSON number (`12.345`).
    pub(crate) fn millis(&mut self, key: Key, micros: u64) {
        self.buf.extend_from_slice(key.0.as_bytes());
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

    /// `"key":"…"`, a time (since the epoch) in RFC 3339 with milliseconds.
    pub(crate) fn time_millis(&mut self, key: Key, time: Duration) {
        self.buf.extend_from_slice(key.0.as_bytes());
        self.buf.push(b'"');
        rfc3339(self.buf, self.seconds, time, 3);
        self.buf.push(b'"');
    }

    /// `"key":"ip:port"`.
    pub(crate) fn socket(&mut self, key: Key, addr: &SocketAddr) {
        self.buf.extend_from_slice(key.0.as_bytes());
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

    /// Closes the object and the line, after `"target":"palisade_logging"`.
    pub(crate) fn close(self) {
        self.buf
            .extend_from_slice(concat!(",\"target\":\"", "palisade_logging", "\"}\n").as_bytes());
    }
}

/// Whether a JSON string needs escaping: a `"`, `\` or control character in it. Eight bytes
/// at a time, without a branch per byte.
pub(crate) fn needs_escaping(bytes: &[u8]) -> bool {
    let len = bytes.len();
    if len < 8 {
        return bytes
            .iter()
            .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
    }
    let word = |at: usize| {
        let mut eight = [0; 8];
        eight.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(eight)
    };
    let mut at = 0;
    while at + 8 <= len {
        if word_needs_escaping(word(at)) {
            return true;
        }
        at += 8;
    }
    // The last bytes, in a word that overlaps the one before.
    at < len && word_needs_escaping(word(len - 8))
}

/// Whether any of a word's eight bytes is below 0x20, `"` or `\` (these bit tricks are exact
/// for whether there is one; a byte of 0x80 or more is never below 0x20).
fn word_needs_escaping(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |n: u64, word: u64| word.wrapping_sub(n * ONES) & !word & HIGHS;
    let control = below(0x20, word);
    let quote = below(1, word ^ (u64::from(b'"') * ONES));
    let backslash = below(1, word ^ (u64::from(b'\\') * ONES));
    control | quote | backslash != 0
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
pub(crate) fn string(buf: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = value.as_bytes();
    if !needs_escaping(bytes) {
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
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

/// `YYYY-MM-DDTHH:MM:SS.fffZ` (`digits` = 3) or `.ffffffZ` (6), UTC, of a time since the
/// epoch.
fn rfc3339(buf: &mut Vec<u8>, seconds: &mut Seconds, since: Duration, digits: u32) {
    let secs = since.as_secs();
    if secs < YEAR_10000 {
        buf.extend_from_slice(seconds.get(secs));
    } else {
        write_second(buf, secs);
    }
    let mut frac = if digits == 3 {
        since.subsec_millis()
    } else {
        since.subsec_micros()
    };
    let mut out = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let end = digits as usize + 1;
    for slot in out[1..end].iter_mut().rev() {
        *slot = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out[end] = b'Z';
    buf.extend_from_slice(&out[..=end]);
}

/// 10000-01-01T00:00:00Z: from there on a year takes more than four digits, and a second more
/// than the 19 bytes [`Seconds`] keeps.
const YEAR_10000: u64 = 253_402_300_800;

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch, before [`YEAR_10000`].
fn format_second(secs: u64) -> [u8; 19] {
    let mut buf = Vec::with_capacity(19);
    write_second(&mut buf, secs);
    buf.try_into().unwrap_or([b'0'; 19])
}

fn write_second(buf: &mut Vec<u8>, secs: u64) {
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

    fn since(time: std::time::SystemTime) -> Duration {
        time.duration_since(UNIX_EPOCH).unwrap()
    }

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
                text(|b| rfc3339(b, &mut Seconds::default(), since(time), 3)),
                humantime::format_rfc3339_millis(time).to_string()
            );
            assert_eq!(
                text(|b| rfc3339(b, &mut Seconds::default(), since(time), 6)),
                humantime::format_rfc3339_micros(time).to_string()
            );
        }
        // Far past humantime's range, still a well-formed year.
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let far = text(|b| rfc3339(b, &mut Seconds::default(), since(far), 3));
        assert!(far.starts_with("14645-"), "{far}");
        assert!(far.ends_with("Z") && far.len() == 25, "{far}");
    }

    #[test]
    fn cached_seconds_are_the_seconds() {
        // One cache through: a line's time and a deadline a few seconds on, interleaved, across
        // a day, a year and the last second a year has four digits.
        let mut seconds = Seconds::default();
        for start in [0u64, 1_704_067_190, YEAR_10000 - 5] {
            for i in 0..20 {
                for (secs, nanos) in [(start + i / 2, 999_999_999), (start + i / 2 + 7, 1_000)] {
                    let time = UNIX_EPOCH + Duration::new(secs, nanos);
                    for digits in [3, 6] {
                        let cached = text(|b| rfc3339(b, &mut seconds, since(time), digits));
                        let fresh =
                            text(|b| rfc3339(b, &mut Seconds::default(), since(time), digits));
                        assert_eq!(cached, fresh);
                    }
                    if secs < YEAR_10000 {
                        assert_eq!(
                            text(|b| rfc3339(b, &mut seconds, since(time), 6)),
                            humantime::format_rfc3339_micros(time).to_string()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for value in [
            "plain",
            "q\"uote\\",
            "tab\tnl\n\r",
            "\u{1}\u{1f}",
            "héllo ☃",
            "\u{7f}\u{2028}",
        ] {
            let written = text(|b| string(b, value));
            assert_eq!(written, serde_json::to_string(value).unwrap());
            let escaped = !matches!(value, "plain" | "héllo ☃" | "\u{7f}\u{2028}");
            assert_eq!(needs_escaping(value.as_bytes()), escaped, "{value:?}");
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_position() {
        let plain = b"abcdefghijklmnopqrstuvwxyz0123456789-_./:~\x7f";
        for len in 0..plain.len() {
            assert!(!needs_escaping(&plain[..len]));
        }
        for byte in 0..=u8::MAX {
            let special = byte < 0x20 || byte == b'"' || byte == b'\\';
            for len in 1..=19 {
                for at in 0..len {
                    let mut text = plain[..len].to_vec();
                    text[at] = byte;
                    assert_eq!(needs_escaping(&text), special, "{byte:#x} at {at} of {len}");
                }
            }
        }
        // UTF-8 lead and continuation bytes side by side: nothing to escape.
        assert!(!needs_escaping("héllo ☃ wörld ✓ 𝄞".as_bytes()));
    }

    #[test]
    fn millis_keep_microseconds() {
        let line = text(|b| {
            let mut seconds = Seconds::default();
            let mut json = Json::open(b, &mut seconds, Duration::ZERO, Level::WARN, true);
            json.millis(key!("t"), 12_345);
            json.millis(key!("u"), 7);
            json.code(Code::Cancelled);
            json.close();
        });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["t"], 12.345);
        assert_eq!(value["u"], 0.007);
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["message"], "finished call");
        assert_eq!(value["grpc.code"], "Canceled");
        assert_eq!(value["target"], "palisade_logging");
    }
}
