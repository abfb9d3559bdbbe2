//! A span-field formatter for `tracing-subscriber`'s JSON format that writes the fields
//! straight into the span's string: no `serde_json::Value` per field, no map, no UTF-8
//! re-validation of each piece written.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FormatFields, FormattedFields, format::Writer},
};

use crate::line::needs_escaping;

/// Formats span fields as a JSON object, for `tracing_subscriber::fmt().json()`: a drop-in for
/// its `JsonFields` that writes each field as it is recorded.
///
/// `tracing-subscriber`'s `JsonFields` collects a span's fields into a map of
/// `serde_json::Value`s (a `String` per string field) and serializes the map through an
/// adaptor that re-validates every piece as UTF-8; under a busy server that is most of the cost
/// of opening the RPC's span. This formatter writes the same object in one pass. The JSON event
/// formatter reads the object back the same way, so log lines are unchanged (a key recorded
/// twice keeps its last value, as there).
///
/// ```
/// let subscriber = tracing_subscriber::fmt()
///     .json()
///     .flatten_event(true)
///     .fmt_fields(palisade_logging::JsonFields::new())
///     .finish();
/// # drop(subscriber);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields {
    _private: (),
}

impl JsonFields {
    /// The formatter.
    pub fn new() -> Self {
        Self::default()
    }
}

thread_local! {
    /// Each thread's scratch object: a span's fields are written here, then handed to the
    /// span's string in one write (which sizes it once, instead of growing it from empty).
    static OBJECT: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut fields = Some(fields);
        let mut result = Ok(());
        let _ = OBJECT.try_with(|cell| {
            // In use: a field's `Debug` formats a span of its own; that one gets a fresh string.
            if let Ok(mut object) = cell.try_borrow_mut()
                && let Some(fields) = fields.take()
            {
                object.clear();
                result = write_object(&mut object, fields).and_then(|()| writer.write_str(&object));
                if object.capacity() > 64 * 1024 {
                    *object = String::with_capacity(256);
                }
            }
        });
        match fields {
            Some(fields) => {
                let mut object = String::new();
                write_object(&mut object, fields)?;
                writer.write_str(&object)
            }
            None => result,
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Reopen the object: drop its closing brace, append, close it again.
        let first = match current.fields.strip_suffix('}') {
            Some(open) => {
                let first = open == "{";
                current.fields.pop();
                first
            }
            None => {
                current.fields.clear();
                current.fields.push('{');
                true
            }
        };
        let mut visitor = Visitor {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// `{…}`: the fields as a JSON object.
fn write_object<R: RecordFields>(out: &mut String, fields: R) -> fmt::Result {
    out.push('{');
    let mut visitor = Visitor {
        out,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.result?;
    out.push('}');
    Ok(())
}

struct Visitor<'a> {
    out: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// `,"name":` (no comma before the first).
    fn key(&mut self, name: &str, value_len: usize) {
        // One reservation for the key and a value of this size, quotes and punctuation.
        self.out.reserve(name.len() + value_len + 6);
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        push_string(self.out, name);
        self.out.push(':');
    }

    fn field(&mut self, name: &str, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            self.key(name, 0);
            self.result = value(self.out);
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.key(field.name(), value.len());
            push_string(self.out, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field.name(), |out| {
            out.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field.name(), |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field.name(), |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    // i128 and u128 go through `record_debug`, quoted, as in `JsonFields`.

    fn record_f64(&mut self, field: &Field, value: f64) {
        // As `serde_json::Value::from(f64)`: a number when finite, `null` otherwise.
        self.field(field.name(), |out| {
            if value.is_finite() {
                write!(out, "{value:?}")
            } else {
                out.push_str("null");
                Ok(())
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field.name(), |out| {
            out.push('"');
            write!(Escaped(out), "{value}")?;
            out.push('"');
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // As `tracing-subscriber`'s `JsonFields`: `log.*` fields are the `log` crate's
        // metadata, handled elsewhere; a raw identifier loses its `r#`.
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.field(name, |out| {
            out.push('"');
            write!(Escaped(out), "{value:?}")?;
            out.push('"');
            Ok(())
        });
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped (as `serde_json`).
fn push_string(out: &mut String, value: &str) {
    out.push('"');
    push_escaped(out, value);
    out.push('"');
}

fn push_escaped(out: &mut String, value: &str) {
    if !needs_escaping(value.as_bytes()) {
        out.push_str(value);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &byte) in value.as_bytes().iter().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => {
                out.push_str(&value[start..i]);
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.push_str(&value[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&value[start..]);
}

/// Escapes what is written through it.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Odd;

    impl std::fmt::Display for Odd {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("dis\"play\n")
        }
    }

    impl std::error::Error for Odd {}

    /// Every value kind, recorded at open and later, in and out of nested spans.
    fn log_some() {
        let outer = tracing::info_span!("outer", a = "x\"y\\z\u{1}\u{8}", n = 3u64);
        let _outer = outer.enter();
        let span = tracing::info_span!(
            "inner",
            i = -4i64,
            big = u128::MAX,
            small = i128::MIN,
            f = 1.5f64,
            whole = 2.0f64,
            nan = f64::NAN,
            b = true,
            d = ?("a", 1),
            r#type = "raw",
            e = &Odd as &(dyn std::error::Error + 'static),
            late = tracing::field::Empty,
            later = tracing::field::Empty,
        );
        span.record("late", "now");
        span.record("later", 7u64);
        span.record("i", 9i64);
        let _span = span.enter();
        let empty = tracing::info_span!("empty");
        empty.record("nothing", 1u64);
        let _empty = empty.enter();
        tracing::info!(k = "v", "hello");
    }

    fn lines(json: impl FnOnce(Buffer) -> tracing::Dispatch) -> serde_json::Value {
        let buffer = Buffer::default();
        let dispatch = json(buffer.clone());
        tracing::dispatcher::with_default(&dispatch, log_some);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let mut line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        line.as_object_mut().unwrap().remove("timestamp");
        line
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_fields() {
        let theirs = lines(|buffer| {
            tracing::Dispatch::new(
                tracing_subscriber::fmt()
                    .json()
                    .flatten_event(true)
                    .with_writer(buffer)
                    .finish(),
            )
        });
        let ours = lines(|buffer| {
            tracing::Dispatch::new(
                tracing_subscriber::fmt()
                    .json()
                    .flatten_event(true)
                    .fmt_fields(JsonFields::new())
                    .with_writer(buffer)
                    .finish(),
            )
        });
        assert_eq!(ours, theirs);
        assert_eq!(ours["spans"][1]["late"], "now");
        assert_eq!(ours["spans"][1]["i"], 9);
        assert_eq!(ours["span"]["name"], "empty");
    }

    /// A field whose `Debug` opens a span of its own: the inner span is formatted while the
    /// outer one's scratch string is in use, into a string of its own.
    struct OpensASpan;

    impl fmt::Debug for OpensASpan {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let inner = tracing::info_span!("nested", quote = "a\"b");
            let _inner = inner.enter();
            f.write_str("outer \"debug\"")
        }
    }

    #[test]
    fn a_span_formatted_while_another_is_gives_both_their_fields() {
        let buffer = Buffer::default();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_span_list(true)
                .fmt_fields(JsonFields::new())
                .with_writer(buffer.clone())
                .finish(),
        );
        tracing::dispatcher::with_default(&dispatch, || {
            let outer = tracing::info_span!("outer", first = "x", odd = ?OpensASpan, last = 2u64);
            let _outer = outer.enter();
            tracing::info!("inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["span"]["first"], "x", "{line}");
        assert_eq!(line["span"]["odd"], "outer \"debug\"", "{line}");
        assert_eq!(line["span"]["last"], 2, "{line}");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for value in [
            "plain",
            "q\"uote\\",
            "tab\tnl\n\r",
            "\u{1}\u{8}\u{c}\u{1f}",
            "héllo ☃",
        ] {
            let mut out = String::new();
            push_string(&mut out, value);
            assert_eq!(out, serde_json::to_string(value).unwrap());
        }
    }
}
