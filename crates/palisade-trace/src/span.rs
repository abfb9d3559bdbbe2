//! Starting an RPC's span and ending it with the RPC's outcome.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering,
};

use http::{Uri, request::Parts};
use opentelemetry::{
    Context, KeyValue, StringValue,
    baggage::{Baggage, BaggageExt},
    trace::{Link, Span, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer},
};
use palisade_core::{CodeSet, Counts, Method, Observer, Outcome, Peer, Rpc, Side};

use crate::{config::Config, names::MethodNames};

/// The attribute names the spans carry, from OpenTelemetry's RPC and network conventions.
pub mod attribute {
    /// `rpc.system`: always `grpc`.
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// `rpc.service`: the full service name, `package.Service` (`_OTHER` for a method the
    /// layer's registry does not have).
    pub const RPC_SERVICE: &str = "rpc.service";
    /// `rpc.method`: the method name, `Method` (`_OTHER` for a method the layer's registry
    /// does not have).
    pub const RPC_METHOD: &str = "rpc.method";
    /// `rpc.grpc.status_code`: the RPC's gRPC code, as an integer.
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    /// `server.address`: the server's host name or IP address.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `server.port`: the server's port.
    pub const SERVER_PORT: &str = "server.port";
    /// `network.peer.address`: the IP address of the other end of the connection (server spans).
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    /// `network.peer.port`: the port of the other end of the connection (server spans).
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    /// The prefix of allow-listed request metadata, `rpc.grpc.request.metadata.<key>`, a
    /// string array of the key's values.
    pub const RPC_GRPC_REQUEST_METADATA: &str = "rpc.grpc.request.metadata.";
    /// `enduser.id`: the caller's subject as an inner layer verified it (jwt writes it into
    /// the per-RPC record); server spans only, set at the end of the RPC.
    pub const ENDUSER_ID: &str = "enduser.id";
    /// `palisade.rejected_by`: the Palisade layer that answered the call itself (`jwt`,
    /// `ratelimit`, `breaker`, …), when one did.
    pub const PALISADE_REJECTED_BY: &str = "palisade.rejected_by";
    /// `palisade.attempts`: how many attempts a retry layer inside made of the call, when it
    /// made more than one (client spans; each attempt is a server span under this one).
    pub const PALISADE_ATTEMPTS: &str = "palisade.attempts";
}

use attribute::*;

/// The name of the span of requests whose path is not a gRPC method, or, with a registry, not
/// one of its methods: low-cardinality, as OpenTelemetry wants span names to be.
const NOT_A_METHOD: &str = "grpc";

/// `rpc.service` and `rpc.method` of a method the registry does not have, as OpenTelemetry's
/// conventions write values past an instrumentation's known set.
const OTHER: &str = "_OTHER";

/// A started span: the context to make current, and whether the span records (only then is
/// there anything to end).
pub(crate) struct Started {
    pub(crate) cx: Context,
    pub(crate) recording: bool,
}

/// The attributes a span may carry besides the allow-listed metadata: `rpc.system`,
/// `rpc.service`, `rpc.method`, `server.address`, `server.port`, `network.peer.address`,
/// `network.peer.port` at the start; `rpc.grpc.status_code`, `enduser.id`,
/// `palisade.rejected_by`, `palisade.attempts` at the end.
const MAX_ATTRIBUTES: usize = 11;

/// Starts the span of the RPC whose request head is `request` (the layer's skip matcher has
/// already passed it).
///
/// Only the name and the kind are given when the span starts; the attributes are built only
/// for spans that record, so an unsampled RPC costs no attribute at all.
pub(crate) fn start<T>(config: &Config, tracer: &T, request: &Parts) -> Started
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let method = Method::from_uri(&request.uri);
    let method = method.as_ref();
    // With a registry, only its methods name spans: a path a caller made up is `_OTHER`.
    // Without one, the paths that earned a slot do (bounded, by frequency on a server).
    let named = method.and_then(|method| {
        let names = match &config.registry {
            Some(registry) => registry.get(method)?,
            None => {
                let slots = &config.names;
                let path = method.path();
                let (_, names) = slots
                    .get(path)
                    .or_else(|| slots.admit(path, MethodNames::of))?;
                *names
            }
        };
        Some(Named { method, names })
    });
    let name = match named {
        Some(named) => named.full_name(),
        None => Cow::Borrowed(NOT_A_METHOD),
    };
    let mut builder = SpanBuilder::from_name(name);
    let parent = match config.side {
        Side::Server => {
            builder.span_kind = Some(SpanKind::Server);
            let incoming = config.propagation.extract(&request.headers);
            if config
                .new_root
                .as_ref()
                .is_some_and(|new_root| new_root.matches(method))
            {
                let (root, link) = new_root(&incoming);
                builder.links = link.map(|link| vec![link]);
                root
            } else {
                incoming
            }
        }
        Side::Client => {
            builder.span_kind = Some(SpanKind::Client);
            Context::current()
        }
    };
    // Room for every attribute, so the span's list never grows, when the span will likely
    // record: its parent sampled (or it has none), and the last such span of the layer
    // recorded (a sampler may drop roots, a no-op tracer records nothing). The sampler sees
    // the same empty list either way.
    let hopeful = {
        let span = parent.span();
        let parent = span.span_context();
        !parent.is_valid() || parent.is_sampled()
    };
    let recorded = config.recorded.load(Ordering::Relaxed);
    if hopeful && recorded {
        builder.attributes = Some(Vec::with_capacity(MAX_ATTRIBUTES + config.metadata.len()));
    }
    let mut span = tracer.build_with_context(builder, &parent);
    let recording = span.is_recording();
    if hopeful && recording != recorded {
        config.recorded.store(recording, Ordering::Relaxed);
    }
    if !recording {
        // Children need only the ids and flags: no boxed span, no attributes.
        let span_context = span.span_context().clone();
        return Started {
            cx: parent.with_remote_span_context(span_context),
            recording: false,
        };
    }
    set_attributes(&mut span, config, method.map(|_| named), request);
    Started {
        cx: parent.with_span(span),
        recording: true,
    }
}

/// A method that names its span, with its names when they are kept.
#[derive(Clone, Copy)]
struct Named<'a> {
    method: &'a Method<'a>,
    names: Option<MethodNames>,
}

impl Named<'_> {
    fn full_name(self) -> Cow<'static, str> {
        match self.names {
            Some(names) => Cow::Borrowed(names.full()),
            None => Cow::Owned(self.method.full_name().to_owned()),
        }
    }

    fn service(self) -> StringValue {
        match self.names {
            Some(names) => names.service().into(),
            None => self.method.service().to_owned().into(),
        }
    }

    fn method(self) -> StringValue {
        match self.names {
            Some(names) => names.method().into(),
            None => self.method.method().to_owned().into(),
        }
    }
}

/// For a call `new_root_for` selects: a context without the incoming span (so the new span is
/// a root),
/// keeping the incoming baggage, and a link to the incoming span when there was one.
fn new_root(incoming: &Context) -> (Context, Option<Link>) {
    let remote = incoming.span().span_context().clone();
    let link = remote.is_valid().then(|| Link::with_context(remote));
    let baggage = incoming.baggage();
    let root = if baggage.is_empty() {
        Context::new()
    } else {
        let copy: Baggage = baggage
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Context::new().with_baggage(copy)
    };
    (root, link)
}

/// The attributes of a recording span at its start. `method`: `None` for a path that is not
/// a gRPC method, `Some(None)` for a method that names no span (`_OTHER`).
fn set_attributes<S: Span>(
    span: &mut S,
    config: &Config,
    method: Option<Option<Named<'_>>>,
    request: &Parts,
) {
    span.set_attribute(KeyValue::new(RPC_SYSTEM, "grpc"));
    match method {
        Some(Some(named)) => {
            span.set_attribute(KeyValue::new(RPC_SERVICE, named.service()));
            span.set_attribute(KeyValue::new(RPC_METHOD, named.method()));
        }
        Some(None) => {
            span.set_attribute(KeyValue::new(RPC_SERVICE, OTHER));
            span.set_attribute(KeyValue::new(RPC_METHOD, OTHER));
        }
        None => {}
    }
    match config.side {
        Side::Server => {
            let peer = Peer::from_extensions(&request.extensions);
            match uri_host(&request.uri) {
                Some((host, port)) => set_server(span, strings::host(host), port),
                None => {
                    if let Some(local) = peer.local_addr {
                        set_server(span, strings::local_ip(local.ip()), Some(local.port()));
                    }
                }
            }
            if let Some(remote) = peer.remote_addr {
                set_peer(span, remote);
            }
        }
        Side::Client => match (&config.server, uri_host(&request.uri)) {
            (Some(server), _) => {
                span.set_attribute(KeyValue::new(SERVER_ADDRESS, server.host.clone()));
                span.set_attribute(KeyValue::new(SERVER_PORT, i64::from(server.port)));
            }
            (None, Some((host, port))) => set_server(span, strings::host(host), port),
            (None, None) => {}
        },
    }
    for capture in config.metadata.iter() {
        if let Some(attribute) = capture.attribute(&request.headers) {
            span.set_attribute(attribute);
        }
    }
}

fn uri_host(uri: &Uri) -> Option<(&str, Option<u16>)> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, uri.port_u16()))
}

fn set_server<S: Span>(span: &mut S, host: StringValue, port: Option<u16>) {
    span.set_attribute(KeyValue::new(SERVER_ADDRESS, host));
    if let Some(port) = port {
        span.set_attribute(KeyValue::new(SERVER_PORT, i64::from(port)));
    }
}

fn set_peer<S: Span>(span: &mut S, peer: SocketAddr) {
    span.set_attribute(KeyValue::new(
        NETWORK_PEER_ADDRESS,
        strings::peer_ip(peer.ip()),
    ));
    span.set_attribute(KeyValue::new(NETWORK_PEER_PORT, i64::from(peer.port())));
}

/// The address strings of spans, reference-counted, each thread keeping the last one of each
/// kind it made: a server's local address and host are nearly always the last call's, and a
/// connection's calls share their peer, so most spans take a count rather than a string.
mod strings {
    use std::{cell::RefCell, net::IpAddr, sync::Arc};

    use opentelemetry::StringValue;

    /// The last string made for a key, on this thread.
    struct Last<K> {
        key: K,
        value: Arc<str>,
    }

    thread_local! {
        static HOST: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
        static LOCAL: RefCell<Option<Last<IpAddr>>> = const { RefCell::new(None) };
        static PEER: RefCell<Option<Last<IpAddr>>> = const { RefCell::new(None) };
    }

    /// A host name or address, as written.
    pub(super) fn host(host: &str) -> StringValue {
        HOST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some(value) if **value == *host => value.clone(),
                _ => last.insert(Arc::from(host)).clone(),
            }
        })
        .into()
    }

    /// The server's own IP address, as `Display` writes it.
    pub(super) fn local_ip(ip: IpAddr) -> StringValue {
        ip_of(&LOCAL, ip)
    }

    /// The peer's IP address, as `Display` writes it.
    pub(super) fn peer_ip(ip: IpAddr) -> StringValue {
        ip_of(&PEER, ip)
    }

    fn ip_of(
        cache: &'static std::thread::LocalKey<RefCell<Option<Last<IpAddr>>>>,
        ip: IpAddr,
    ) -> StringValue {
        cache
            .with(|last| {
                let mut last = last.borrow_mut();
                match &*last {
                    Some(Last { key, value }) if *key == ip => value.clone(),
                    _ => {
                        let value = super::ip_str(ip, |text| Arc::<str>::from(text));
                        *last = Some(Last {
                            key: ip,
                            value: value.clone(),
                        });
                        value
                    }
                }
            })
            .into()
    }
}

/// An IP address as `Display` writes it, handed to `with`; IPv4 (every call on most servers)
/// by hand, on the stack, without the formatting machinery.
fn ip_str<R>(ip: IpAddr, with: impl FnOnce(&str) -> R) -> R {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            with(std::str::from_utf8(&text[..len]).expect("digits and dots"))
        }
        IpAddr::V6(v6) => with(&v6.to_string()),
    }
}

/// Whether a code makes the span an error: on a server only the codes OpenTelemetry calls
/// server errors, on a client every code but `Ok`.
pub(crate) fn is_error(side: Side, code: palisade_core::Code) -> bool {
    match side {
        Side::Server => CodeSet::SERVER_ERRORS.contains(code),
        Side::Client => code != palisade_core::Code::Ok,
    }
}

/// Ends the span at the end of the RPC, with its code and status: the [`Observer`] of the
/// observed response. Holds the context, and the per-RPC record whose facts it reads at the
/// end, only for spans that record.
#[derive(Debug)]
pub struct SpanEnd {
    cx: Option<Context>,
    record: Option<Rpc>,
    side: Side,
}

impl SpanEnd {
    pub(crate) fn new(started: &Started, side: Side, record: Option<Rpc>) -> Self {
        Self {
            cx: started.recording.then(|| started.cx.clone()),
            record: record.filter(|_| started.recording),
            side,
        }
    }
}

impl Observer for SpanEnd {
    fn on_end(self, outcome: Outcome, _: Counts) {
        let Some(cx) = self.cx else { return };
        let span = cx.span();
        let code = outcome.code();
        span.set_attribute(KeyValue::new(RPC_GRPC_STATUS_CODE, code as i64));
        let record = self.record.as_ref();
        if self.side == Side::Server
            && let Some(subject) = record.and_then(Rpc::shared_subject)
        {
            // The record's `Arc`, shared: no copy of the subject per span.
            span.set_attribute(KeyValue::new(ENDUSER_ID, subject.clone()));
        }
        if let Some(layer) = outcome
            .rejected_by()
            .or_else(|| record.and_then(Rpc::rejected_by))
        {
            span.set_attribute(KeyValue::new(PALISADE_REJECTED_BY, layer));
        }
        if let Some(attempts) = record.map(Rpc::attempts).filter(|attempts| *attempts > 1) {
            span.set_attribute(KeyValue::new(PALISADE_ATTEMPTS, i64::from(attempts)));
        }
        if is_error(self.side, code) {
            let description = outcome.message().map(Cow::into_owned).unwrap_or_default();
            span.set_status(Status::error(description));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_strings_are_those_of_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.99.100.109",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_str(ip, str::to_owned), ip.to_string());
            assert_eq!(strings::peer_ip(ip).as_str(), ip.to_string());
            assert_eq!(strings::local_ip(ip).as_str(), ip.to_string());
        }
    }
}
