//! W3C trace context (`traceparent`, `tracestate`) read and written by hand, and W3C baggage
//! through the SDK's propagator: [`W3cPropagator`].

use std::{str::FromStr, sync::OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::BaggagePropagator;

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
pub(crate) const BAGGAGE: &str = "baggage";

/// The W3C fields, parsed once: a lookup by `&str` parses the name on every call.
pub(crate) static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
pub(crate) static TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);
pub(crate) static BAGGAGE_NAME: HeaderName = HeaderName::from_static(BAGGAGE);

/// The length of a version-`00` `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// W3C [trace context](https://www.w3.org/TR/trace-context/) (`traceparent`, `tracestate`)
/// and, unless [`without_baggage`](Self::without_baggage),
/// [baggage](https://www.w3.org/TR/baggage/) (`baggage`, by the SDK's `BaggagePropagator`):
/// what a `TextMapCompositePropagator` of the SDK's `TraceContextPropagator` and
/// `BaggagePropagator` propagates, read and written without the SDK's parsing and formatting.
///
/// Give it to a layer with [`TraceBuilder::propagator`](crate::TraceBuilder::propagator): the
/// layer then reads `traceparent` straight from the request's metadata and writes it into a
/// 55-byte value, the cheapest way to propagate (a layer given the SDK's
/// `TraceContextPropagator` alone does the same). It is an ordinary [`TextMapPropagator`]
/// too, so it can be installed as the global propagator, for Palisade's layers and others.
///
/// Its `traceparent` is exactly W3C's: `version-traceid-parentid-flags` in lowercase hex of 2,
/// 32, 16 and 2 digits; version `ff` is invalid, version `00` has nothing after the flags, a
/// higher version may have more fields after a `-`. Anything else — truncated fields, upper
/// case, all-zero ids — is no parent (the SDK's parser accepts some of these, such as
/// `00-…-…-0`; a trace layer checks the syntax before any propagator reads the header, so
/// either way the call starts a new trace). `tracestate` is read only with a valid
/// `traceparent`; one that is not valid is dropped.
///
/// ```
/// use opentelemetry::{
///     propagation::TextMapPropagator,
///     trace::{TraceContextExt, TraceId},
/// };
/// use palisade_trace::{TraceLayer, W3cPropagator};
/// use std::collections::HashMap;
///
/// let layer = TraceLayer::server().propagator(W3cPropagator::new()).build();
/// # let _ = layer;
///
/// let headers = HashMap::from([(
///     "traceparent".to_owned(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
/// )]);
/// let cx = W3cPropagator::new().extract(&headers);
/// let span = cx.span();
/// assert_eq!(
///     span.span_context().trace_id(),
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
/// );
/// assert!(span.span_context().is_sampled());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct W3cPropagator {
    baggage: bool,
}

impl W3cPropagator {
    /// Trace context and baggage.
    pub fn new() -> Self {
        Self { baggage: true }
    }

    /// Trace context only (`traceparent`, `tracestate`), as the SDK's `TraceContextPropagator`
    /// alone.
    #[must_use]
    pub fn without_baggage(self) -> Self {
        Self { baggage: false }
    }

    /// Whether `baggage` is propagated too.
    pub fn has_baggage(&self) -> bool {
        self.baggage
    }

    /// The incoming context from request metadata: `base` with the remote span and baggage
    /// the metadata carries — what this propagator reads through palisade's extractor, with
    /// one lookup per field.
    pub(crate) fn extract_headers(&self, base: &Context, headers: &HeaderMap) -> Context {
        let fields = Fields::of(headers);
        let parent = fields.traceparent.one().and_then(traceparent_of_header);
        let cx = match parent {
            Some(parent) => {
                // A value that is not visible ASCII reads as absent, as any other field.
                let state = fields.tracestate.one().and_then(|v| v.to_str().ok());
                base.with_remote_span_context(parent.span_context(state))
            }
            None => base.clone(),
        };
        // Without a `baggage` header the baggage propagator would return `cx` as it is.
        if self.baggage && fields.baggage {
            let extractor = crate::config::MetadataExtractor::new(headers);
            BaggagePropagator::new().extract_with_context(&cx, &extractor)
        } else {
            cx
        }
    }

    /// Writes `cx` into outgoing request metadata, as this propagator does through palisade's
    /// injector: `traceparent`, and `tracestate` unless the trace state is empty, for a valid
    /// span context; `baggage` when there is some.
    pub(crate) fn inject_headers(&self, cx: &Context, headers: &mut HeaderMap) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            let traceparent = HeaderValue::from_bytes(&traceparent_bytes(span_context))
                .expect("lowercase hex and dashes are a valid header value");
            headers.insert(TRACEPARENT_NAME.clone(), traceparent);
            // An empty trace state is not sent (as OpenTelemetry Go and Java do): one header
            // less to write, and to read at every hop.
            let state = span_context.trace_state().header();
            if !state.is_empty() {
                if let Ok(state) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
                    headers.insert(TRACESTATE_NAME.clone(), state);
                }
            } else {
                headers.remove(&TRACESTATE_NAME);
            }
        }
        if self.baggage {
            // Nothing at all, at the cost of one context lookup, when there is no baggage.
            let mut injector = crate::config::MetadataInjector::new(headers);
            BaggagePropagator::new().inject_context(cx, &mut injector);
        }
    }
}

impl Default for W3cPropagator {
    /// [`W3cPropagator::new`]: trace context and baggage.
    fn default() -> Self {
        Self::new()
    }
}

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            let bytes = traceparent_bytes(span_context);
            let traceparent: String = bytes.iter().copied().map(char::from).collect();
            injector.set(TRACEPARENT, traceparent);
            // Through an injector, which cannot remove a stale `tracestate`, as the SDK: an
            // empty trace state is written empty.
            injector.set(TRACESTATE, span_context.trace_state().header());
        }
        if self.baggage {
            BaggagePropagator::new().inject_context(cx, injector);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let parent = extractor
            .get(TRACEPARENT)
            .and_then(|value| Traceparent::parse(value.as_bytes()));
        let cx = match parent {
            Some(parent) => {
                cx.with_remote_span_context(parent.span_context(extractor.get(TRACESTATE)))
            }
            None => cx.clone(),
        };
        if self.baggage {
            BaggagePropagator::new().extract_with_context(&cx, extractor)
        } else {
            cx
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 3]> = OnceLock::new();
        let fields = FIELDS.get_or_init(|| [TRACEPARENT, TRACESTATE, BAGGAGE].map(str::to_owned));
        FieldIter::new(if self.baggage {
            &fields[..]
        } else {
            &fields[..2]
        })
    }
}

/// The W3C fields of request metadata.
struct Fields<'a> {
    traceparent: Field<'a>,
    tracestate: Field<'a>,
    baggage: bool,
}

/// Up to this many values, the metadata is scanned once rather than hashed three times (a
/// gRPC request carries a handful of fields; a comparison of names is a few instructions,
/// a lookup a few hundred).
const SCAN_MAX: usize = 16;

impl<'a> Fields<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        if headers.len() > SCAN_MAX {
            return Self {
                traceparent: Field::of(headers.get_all(&TRACEPARENT_NAME).iter()),
                tracestate: Field::of(headers.get_all(&TRACESTATE_NAME).iter()),
                baggage: headers.contains_key(&BAGGAGE_NAME),
            };
        }
        let mut fields = Self {
            traceparent: Field::Absent,
            tracestate: Field::Absent,
            baggage: false,
        };
        for (name, value) in headers {
            if *name == TRACEPARENT_NAME {
                fields.traceparent.push(value);
            } else if *name == TRACESTATE_NAME {
                fields.tracestate.push(value);
            } else if *name == BAGGAGE_NAME {
                fields.baggage = true;
            }
        }
        fields
    }
}

/// A field's values: none, one, or more (two `traceparent` headers are no parent, as W3C's
/// test suite wants, and two `tracestate` headers no trace state).
#[derive(Clone, Copy)]
enum Field<'a> {
    Absent,
    One(&'a HeaderValue),
    Many,
}

impl<'a> Field<'a> {
    fn of(mut values: impl Iterator<Item = &'a HeaderValue>) -> Self {
        match (values.next(), values.next()) {
            (None, _) => Field::Absent,
            (Some(value), None) => Field::One(value),
            (Some(_), Some(_)) => Field::Many,
        }
    }

    fn push(&mut self, value: &'a HeaderValue) {
        *self = match self {
            Field::Absent => Field::One(value),
            Field::One(_) | Field::Many => Field::Many,
        };
    }

    /// The value of a field sent once.
    fn one(self) -> Option<&'a HeaderValue> {
        match self {
            Field::One(value) => Some(value),
            Field::Absent | Field::Many => None,
        }
    }
}

/// A header value's `traceparent`: its extra fields (a later version's) must be visible ASCII
/// too, as for a value read as a string.
fn traceparent_of_header(value: &HeaderValue) -> Option<Traceparent> {
    let bytes = value.as_bytes();
    if bytes.len() > TRACEPARENT_LEN && value.to_str().is_err() {
        return None;
    }
    Traceparent::parse(bytes)
}

/// A valid `traceparent`'s ids and the sampled flag (the one flag W3C defines: others are
/// zeroed, as W3C requires of a version it knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Traceparent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

impl Traceparent {
    /// `None` unless `value` is [a `traceparent`](is_traceparent) with ids that are not all
    /// zero.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let (trace_id, span_id, flags) = fields(value)?;
        let parent = Self {
            trace_id: TraceId::from_bytes(trace_id),
            span_id: SpanId::from_bytes(span_id),
            flags: TraceFlags::new(flags) & TraceFlags::SAMPLED,
        };
        (parent.trace_id != TraceId::INVALID && parent.span_id != SpanId::INVALID).then_some(parent)
    }

    /// The remote span context, with the trace state of `tracestate` when there is one (an
    /// invalid one is dropped).
    fn span_context(self, tracestate: Option<&str>) -> SpanContext {
        let state = match tracestate {
            Some(state) => TraceState::from_str(state).unwrap_or_default(),
            None => TraceState::default(),
        };
        SpanContext::new(self.trace_id, self.span_id, self.flags, true, state)
    }
}

/// Whether `value` has the syntax of a W3C `traceparent`: `version-traceid-parentid-flags` in
/// lowercase hex of 2, 32, 16 and 2 digits, version `ff` forbidden; version `00` exactly that,
/// a higher version possibly followed by `-` and more fields. (All-zero ids are syntactically
/// fine; [`Traceparent::parse`] rejects them.)
pub(crate) fn is_traceparent(value: &[u8]) -> bool {
    fields(value).is_some()
}

/// The trace id, span id and flags of a value with [the syntax](is_traceparent), checked and
/// decoded in one pass: the ids eight digits at a time.
fn fields(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let head: &[u8; TRACEPARENT_LEN] = value.get(..TRACEPARENT_LEN)?.try_into().ok()?;
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let mut valid = true;
    let mut ids = [0; 24];
    for (i, at) in [3, 11, 19, 27, 36, 44].into_iter().enumerate() {
        let (bytes, ok) = hex8(word(head, at));
        ids[4 * i..4 * i + 4].copy_from_slice(&bytes);
        valid &= ok;
    }
    let (version, flags) = (hex2(head[0], head[1]), hex2(head[53], head[54]));
    let end = match version? {
        0xff => false,
        0x00 => value.len() == TRACEPARENT_LEN,
        _ => value.get(TRACEPARENT_LEN).is_none_or(|&next| next == b'-'),
    };
    if !(valid && end) {
        return None;
    }
    let mut trace_id = [0; 16];
    trace_id.copy_from_slice(&ids[..16]);
    let mut span_id = [0; 8];
    span_id.copy_from_slice(&ids[16..]);
    Some((trace_id, span_id, flags?))
}

/// The eight bytes at `at`, as a little-endian word.
fn word(head: &[u8; TRACEPARENT_LEN], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&head[at..at + 8]);
    u64::from_le_bytes(bytes)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight characters (a little-endian word, the first in the low byte) as the four bytes
/// their hex digits make, and whether they all are lowercase hex digits. Byte-wise sums of
/// ASCII bytes carry into no neighbour: each sets its byte's high bit when the byte is at
/// least some bound.
fn hex8(word: u64) -> ([u8; 4], bool) {
    let at_least = |bound: u8| word.wrapping_add(ONES * u64::from(0x80 - bound));
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    let valid = word & HIGH == 0 && (digit | letter) & HIGH == HIGH;
    // `0`–`9` are 0x30–0x39, `a`–`f` 0x61–0x66: the low nibble, plus 9 for a letter (bit 6).
    let nibbles = (word & (ONES * 0x0f)) + ((word >> 6) & ONES) * 9;
    // Byte 2k becomes digit 2k's nibble above digit 2k+1's, then the even bytes close up.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let pairs = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let pairs = (pairs | (pairs >> 16)) as u32;
    (pairs.to_le_bytes(), valid)
}

/// Two lowercase hex digits as a byte.
fn hex2(high: u8, low: u8) -> Option<u8> {
    let (high, low) = (NIBBLE[usize::from(high)], NIBBLE[usize::from(low)]);
    ((high | low) & 0xf0 == 0).then_some(high << 4 | low)
}

const NOT_HEX: u8 = 0xff;

/// Each byte's value as a lowercase hex digit, [`NOT_HEX`] for any other byte.
static NIBBLE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Each byte as two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// `00-{trace id}-{span id}-{flags}`, as the SDK's `TraceContextPropagator` writes it: version
/// `00`, lowercase hex, the sampled flag only.
fn traceparent_bytes(span_context: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    fn encode(bytes: &[u8], out: &mut [u8]) {
        for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
        }
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    encode(&span_context.trace_id().to_bytes(), &mut out[3..35]);
    encode(&span_context.span_id().to_bytes(), &mut out[36..52]);
    let flags = span_context.trace_flags() & TraceFlags::SAMPLED;
    encode(&[flags.to_u8()], &mut out[53..55]);
    out
}

#[cfg(test)]
mod tests {
    //! The by-hand propagation against the SDK's propagators, as a layer uses each: through
    //! palisade's extractor and injector.

    use std::{collections::BTreeSet, sync::Arc};

    use opentelemetry::{
        baggage::{BaggageExt, BaggageMetadata, KeyValueMetadata},
        propagation::TextMapCompositePropagator,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;
    use crate::config::Propagation;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    /// What a layer keeps of an extracted context: the remote span context and the baggage.
    #[derive(Debug, PartialEq)]
    struct Read {
        trace_id: TraceId,
        span_id: SpanId,
        flags: TraceFlags,
        remote: bool,
        state: String,
        baggage: BTreeSet<(String, String, String)>,
    }

    fn read(cx: &Context) -> Read {
        let span = cx.span();
        let sc = span.span_context();
        Read {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            flags: sc.trace_flags(),
            remote: sc.is_remote(),
            state: sc.trace_state().header(),
            baggage: cx
                .baggage()
                .iter()
                .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
                .collect(),
        }
    }

    /// The SDK's propagation, as `.propagator(…)` with a composite (or anything not
    /// recognized) gives it: the propagator behind palisade's extractor and injector.
    fn sdk(baggage: bool) -> Propagation {
        if baggage {
            Propagation::Custom(Arc::new(TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])))
        } else {
            Propagation::Custom(Arc::new(TraceContextPropagator::new()))
        }
    }

    /// The by-hand propagation, and `W3cPropagator` as an ordinary propagator (as the global
    /// one is used).
    fn ours(baggage: bool) -> [Propagation; 2] {
        let w3c = if baggage {
            W3cPropagator::new()
        } else {
            W3cPropagator::new().without_baggage()
        };
        [Propagation::W3c(w3c), Propagation::Custom(Arc::new(w3c))]
    }

    fn headers(fields: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    /// Asserts every propagation reads `fields` as the SDK does; whether it found a parent.
    fn assert_same_extract(fields: &[(&str, &[u8])]) -> bool {
        let map = headers(fields);
        // The same fields among more than `SCAN_MAX` others, which are looked up, not scanned.
        let mut crowded = map.clone();
        for i in 0..=SCAN_MAX {
            crowded.append(
                HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        let found = sdk(true).extract(&map).span().span_context().is_valid();
        for map in [map, crowded] {
            for baggage in [true, false] {
                let expected = read(&sdk(baggage).extract(&map));
                for ours in ours(baggage) {
                    assert_eq!(
                        read(&ours.extract(&map)),
                        expected,
                        "{ours:?} on {map:?} (baggage {baggage})"
                    );
                }
            }
        }
        found
    }

    /// `traceparent` values: valid ones, then one of each malformed class.
    fn traceparents() -> Vec<Vec<u8>> {
        let valid = format!("00-{TRACE}-{SPAN}-01");
        let mut cases: Vec<String> = vec![
            valid.clone(),
            format!("00-{TRACE}-{SPAN}-00"),
            // Unknown flags are dropped, the sampled one kept.
            format!("00-{TRACE}-{SPAN}-03"),
            format!("00-{TRACE}-{SPAN}-fe"),
            format!("00-{TRACE}-{SPAN}-ff"),
            // Later versions, with and without more fields (W3C: read the first four).
            format!("01-{TRACE}-{SPAN}-01"),
            format!("cc-{TRACE}-{SPAN}-09"),
            format!("fe-{TRACE}-{SPAN}-01"),
            format!("cc-{TRACE}-{SPAN}-01-what-ever"),
            format!("cc-{TRACE}-{SPAN}-01-"),
            format!("cc-{TRACE}-{SPAN}-01--"),
            format!("cc-{TRACE}-{SPAN}-01-x\ty"),
            format!("cc-{TRACE}-{SPAN}-01-{}", "z".repeat(200)),
            // Version ff, version 00 with more, separators and hex.
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("cc-{TRACE}-{SPAN}-01x"),
            format!("cc-{TRACE}-{SPAN}"),
            format!("zz-{TRACE}-{SPAN}-01"),
            format!("100-{TRACE}-{SPAN}-01"),
            format!("0-{TRACE}-{SPAN}-01"),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("00-{TRACE}{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.replace('4', "g")),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-001"),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}0-01"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}-{}-01", &SPAN[1..]),
            // Upper case, in each field.
            valid.to_uppercase(),
            format!("0A-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("cc-{TRACE}-{SPAN}-01-UPPER"),
            // All-zero ids.
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16)),
            // Whitespace, which the SDK's own parser trims.
            format!(" {valid}"),
            format!("{valid} "),
            format!("{valid}\t"),
            format!("cc-{TRACE}-{SPAN}-01 "),
            String::new(),
            "garbage".to_owned(),
            "-".repeat(55),
            "-".repeat(60),
            "x".repeat(8000),
        ];
        // Truncated, at every length.
        cases.extend((0..valid.len()).map(|len| valid[..len].to_owned()));
        let mut bytes: Vec<Vec<u8>> = cases.into_iter().map(String::into_bytes).collect();
        // Not ASCII: in a field, and in a later version's extra fields.
        let mut latin1 = valid.clone().into_bytes();
        latin1[10] = 0xe9;
        bytes.push(latin1);
        bytes.push(format!("cc-{TRACE}-{SPAN}-01-\u{e9}").into_bytes());
        bytes.push(
            format!("cc-{TRACE}-{SPAN}-01-a")
                .into_bytes()
                .into_iter()
                .chain([0xff])
                .collect(),
        );
        bytes
    }

    #[test]
    fn extract_is_the_sdks_on_every_class_of_input() {
        let valid = format!("00-{TRACE}-{SPAN}-01");
        let states: [Option<&[u8]>; 7] = [
            None,
            Some(b"foo=bar,vendor@tenant=v1"),
            Some(b""),
            Some(b" a=1 , ,b=2 "),
            Some(b"=nokey"),
            Some(b"a=\xff"),
            Some(b"A=upper-key"),
        ];
        let baggages: [Option<&[u8]>; 5] = [
            None,
            Some(b"k=v"),
            Some(b"k=v;meta=1,user%20id=a%2Cb"),
            Some(b"k=\xe9"),
            Some(b"garbage"),
        ];
        let mut found = BTreeSet::new();
        for traceparent in traceparents() {
            for state in states {
                for baggage in baggages {
                    let mut fields: Vec<(&str, &[u8])> = vec![("traceparent", &traceparent)];
                    fields.extend(state.map(|s| ("tracestate", s)));
                    fields.extend(baggage.map(|b| ("baggage", b)));
                    if assert_same_extract(&fields) {
                        found.insert(String::from_utf8_lossy(&traceparent).into_owned());
                    }
                }
            }
        }
        // The valid ones, and no other, were parents: 5 of version 00, 9 later ones.
        assert_eq!(found.len(), 14, "{found:#?}");
        let many: String = (0..100)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let other = format!("00-{}-{SPAN}-01", "1".repeat(32));
        for fields in [
            // Duplicated fields, the same value or not.
            vec![
                ("traceparent", valid.as_bytes()),
                ("traceparent", valid.as_bytes()),
            ],
            vec![
                ("traceparent", valid.as_bytes()),
                ("traceparent", other.as_bytes()),
            ],
            vec![
                ("traceparent", valid.as_bytes()),
                ("tracestate", b"a=1".as_slice()),
                ("tracestate", b"b=2".as_slice()),
            ],
            vec![
                ("traceparent", valid.as_bytes()),
                ("baggage", b"a=1".as_slice()),
                ("baggage", b"b=2"),
            ],
            // Trace state and baggage without a parent, a long trace state.
            vec![("tracestate", b"a=1".as_slice()), ("baggage", b"k=v")],
            vec![
                ("traceparent", valid.as_bytes()),
                ("tracestate", many.as_bytes()),
            ],
            // Other metadata only, and none.
            vec![("x-other", b"00".as_slice())],
            vec![],
        ] {
            assert_same_extract(&fields);
        }
    }

    /// Random edits of valid headers — bytes replaced, inserted, removed, cut — read the same.
    #[test]
    fn extract_is_the_sdks_on_random_edits() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEFxz-_ \t.\xe9\xff";
        let seeds = [
            format!("00-{TRACE}-{SPAN}-01"),
            format!("cc-{TRACE}-{SPAN}-00-more"),
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut value = seeds[round % seeds.len()].clone().into_bytes();
            for _ in 0..=next(3) {
                let at = next(value.len() + 1);
                let byte = ALPHABET[next(ALPHABET.len())];
                match next(4) {
                    0 if at < value.len() => value[at] = byte,
                    1 => value.insert(at, byte),
                    2 if at < value.len() => {
                        value.remove(at);
                    }
                    3 => value.truncate(at),
                    _ => {}
                }
            }
            if HeaderValue::from_bytes(&value).is_err() {
                continue;
            }
            let fields: [(&str, &[u8]); 2] = [("traceparent", &value), ("tracestate", b"k=v")];
            let found = assert_same_extract(&fields);
            let header = HeaderValue::from_bytes(&value).unwrap();
            assert_eq!(found, traceparent_of_header(&header).is_some());
            parsed += usize::from(found);
        }
        // Both classes were tried many times: edits that keep a valid header, and others.
        assert!(parsed > 1_000 && parsed < 19_000, "{parsed}");
    }

    fn remote(flags: u8, state: &str) -> Context {
        let state = TraceState::from_str(state).unwrap();
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            TraceFlags::new(flags),
            true,
            state,
        ))
    }

    #[test]
    fn inject_is_the_sdks() {
        let metadata = BaggageMetadata::from("meta=1");
        let baggages = [
            vec![],
            vec![KeyValueMetadata::new("k", "v", BaggageMetadata::default())],
            vec![
                KeyValueMetadata::new("user id", "a,b=c;\"d\"", metadata.clone()),
                KeyValueMetadata::new("k2", "é", BaggageMetadata::default()),
            ],
        ];
        let contexts = [
            Context::new(),
            remote(0x01, ""),
            remote(0x00, ""),
            remote(0xff, ""),
            remote(0x01, "foo=bar,vendor@tenant=v1"),
            Context::new().with_remote_span_context(SpanContext::NONE),
        ];
        let before = [
            HeaderMap::new(),
            headers(&[
                ("traceparent", b"old"),
                ("tracestate", b"old=1"),
                ("baggage", b"old=1"),
                ("x-other", b"1"),
            ]),
        ];
        for cx in &contexts {
            for baggage in &baggages {
                let cx = cx.with_baggage(baggage.clone());
                for map in &before {
                    for with_baggage in [true, false] {
                        let mut expected = map.clone();
                        sdk(with_baggage).inject(&cx, &mut expected);
                        for ours in ours(with_baggage) {
                            let mut expected = expected.clone();
                            // The fast path sends no empty tracestate (as OpenTelemetry Go
                            // and Java do); the rest is the SDK's, byte for byte.
                            if matches!(ours, Propagation::W3c(_))
                                && expected.get("tracestate").is_some_and(|v| v.is_empty())
                            {
                                expected.remove("tracestate");
                            }
                            let mut got = map.clone();
                            ours.inject(&cx, &mut got);
                            assert_eq!(got, expected, "{ours:?} of {cx:?}");
                        }
                    }
                }
            }
        }
        // One traceparent, and no tracestate for an empty trace state (the SDK writes an
        // empty one); a stale one in the request is removed.
        let mut map = headers(&[("tracestate", b"old=1")]);
        Propagation::W3c(W3cPropagator::new()).inject(&remote(0x03, ""), &mut map);
        assert_eq!(map["traceparent"], format!("00-{TRACE}-{SPAN}-01"));
        assert!(!map.contains_key("tracestate"));
        assert!(!map.contains_key("baggage"));
    }

    #[test]
    fn fields_are_the_sdks() {
        let names =
            |p: &dyn TextMapPropagator| p.fields().map(str::to_owned).collect::<BTreeSet<_>>();
        assert_eq!(
            names(&W3cPropagator::new()),
            names(&TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]))
        );
        assert_eq!(
            names(&W3cPropagator::new().without_baggage()),
            names(&TraceContextPropagator::new())
        );
    }

    #[test]
    fn only_known_propagators_are_read_by_hand() {
        let by_hand = |p: &Propagation| matches!(p, Propagation::W3c(_));
        assert!(by_hand(&Propagation::given(W3cPropagator::new())));
        let sdk = Propagation::given(TraceContextPropagator::new());
        assert!(matches!(sdk, Propagation::W3c(w3c) if !w3c.has_baggage()));
        assert!(!by_hand(&Propagation::given(
            TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new()),])
        )));
        assert!(!by_hand(&Propagation::given(BaggagePropagator::new())));
    }

    /// `hex8` against the table, for every byte in every position of a word of digits.
    #[test]
    fn eight_digits_at_a_time_are_the_tables() {
        for digits in [*b"0123abcd", *b"ef456789", *b"00000000", *b"ffffffff"] {
            for at in 0..8 {
                for byte in 0..=255 {
                    let mut chars = digits;
                    chars[at] = byte;
                    let expected: Option<Vec<u8>> = chars
                        .chunks_exact(2)
                        .map(|pair| hex2(pair[0], pair[1]))
                        .collect();
                    let (bytes, valid) = hex8(u64::from_le_bytes(chars));
                    assert_eq!(valid, expected.is_some(), "{chars:?}");
                    if let Some(expected) = expected {
                        assert_eq!(bytes.to_vec(), expected, "{chars:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn traceparent_syntax() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(valid.as_bytes()));
        assert!(is_traceparent(
            format!("cc{}-what-ever", &valid[2..]).as_bytes()
        ));
        assert!(is_traceparent(format!("cc{}", &valid[2..]).as_bytes()));
        for bad in [
            &valid[..54],
            &format!("{valid}-x"),
            &format!("cc{}x", &valid[2..]),
            &format!("ff{}", &valid[2..]),
            &valid.to_uppercase(),
            &valid.replace('-', "_"),
            "",
        ] {
            assert!(!is_traceparent(bad.as_bytes()), "{bad}");
        }
    }
}
