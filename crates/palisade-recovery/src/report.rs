//! What happens once per panic: the log record, the counter, the hook.

use std::{
    any::Any,
    borrow::Cow,
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use foldhash::fast::RandomState;
use http::uri::PathAndQuery;
use metrics::{Level, Metadata, Recorder};
pub(crate) use palisade_core::recorder::{MethodLabels as Labels, Registrar};
use palisade_core::{
    Code, Matcher, Method, Rejection,
    recorder::method_counter,
    slots::{MAX_PATH_LEN, SlotId, Slots},
};

/// The counter of panics answered, labelled `grpc_service` and `grpc_method`.
pub const PANICS_TOTAL: &str = "palisade_panics_total";

/// What a panicking RPC is answered with: `INTERNAL`, `internal error`, marked as recovery's.
pub const MESSAGE: &str = "internal error";

/// The layer's name in its rejections' [`LocalRejection`](palisade_core::LocalRejection) mark
/// and in `palisade.rejected_by`.
pub const NAME: &str = "recovery";

/// What a panic's message is cut to by default, in bytes
/// ([`RecoveryBuilder::max_message_len`](crate::RecoveryBuilder::max_message_len)).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 256;

/// What the message of a panic whose payload is neither a `&str` nor a `String` reads.
pub const NON_STRING_PAYLOAD: &str = "non-string panic payload";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::ERROR, Some(module_path!()));

/// The label value of methods without a slot of their own.
const UNKNOWN: &str = "unknown";

/// Where in the RPC the handler panicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PanicStage {
    /// In the inner service's `call`, before it returned a future.
    Call,
    /// While its response future was polled: no response head had gone out, so the RPC was
    /// answered trailers-only.
    ResponseFuture,
    /// While its response body was polled: the head (and maybe messages) had gone out, so the
    /// body ended with `INTERNAL` trailers.
    ResponseBody,
}

impl PanicStage {
    /// `"call"`, `"response_future"` or `"response_body"`: the `panic.stage` log field.
    pub const fn as_str(self) -> &'static str {
        match self {
            PanicStage::Call => "call",
            PanicStage::ResponseFuture => "response_future",
            PanicStage::ResponseBody => "response_body",
        }
    }
}

impl fmt::Display for PanicStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One panic that was answered with `INTERNAL`, as the
/// [`on_panic`](crate::RecoveryBuilder::on_panic) hook sees it.
#[derive(Clone, Copy, Debug)]
pub struct PanicReport<'a> {
    service: &'a str,
    method: &'a str,
    message: &'a str,
    stage: PanicStage,
}

impl<'a> PanicReport<'a> {
    /// `package.Service` of the RPC (from its path, bounded; `unknown` when the path is not a
    /// gRPC method).
    pub fn service(&self) -> &'a str {
        self.service
    }

    /// `Method` of the RPC (as [`service`](Self::service)).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The panic's message, bounded
    /// ([`max_message_len`](crate::RecoveryBuilder::max_message_len)), or
    /// [`NON_STRING_PAYLOAD`].
    pub fn message(&self) -> &'a str {
        self.message
    }

    /// Where the handler panicked.
    pub fn stage(&self) -> PanicStage {
        self.stage
    }
}

/// The hook called once per panic.
pub(crate) type OnPanic = Arc<dyn Fn(&PanicReport<'_>) + Send + Sync>;

/// What every service the layer makes shares.
pub(crate) struct Shared {
    pub(crate) skip: Option<Matcher>,
    pub(crate) max_message_len: usize,
    pub(crate) slots: Slots<Labels, RandomState>,
    pub(crate) registrar: Registrar,
    pub(crate) on_panic: Option<OnPanic>,
}

impl Shared {
    pub(crate) fn new(
        skip: Option<Matcher>,
        max_message_len: usize,
        known: impl IntoIterator<Item = (String, String)>,
        max_dynamic: usize,
        registrar: Registrar,
        on_panic: Option<OnPanic>,
    ) -> Self {
        let known: Vec<(String, Labels)> = known
            .into_iter()
            .map(|(service, method)| {
                (
                    format!("/{service}/{method}"),
                    Labels {
                        service: service.into(),
                        method: method.into(),
                    },
                )
            })
            .collect();
        registrar.with(|recorder| {
            recorder.describe_counter(
                PANICS_TOTAL.into(),
                None,
                "Handler panics answered with INTERNAL by palisade-recovery.".into(),
            );
            // The known methods' series (and `unknown`'s) at zero, so that a rate over them
            // exists before the first panic.
            for (_, labels) in &known {
                register(recorder, &labels.service, &labels.method).increment(0);
            }
            register(recorder, UNKNOWN, UNKNOWN).increment(0);
        });
        Shared {
            skip,
            max_message_len,
            slots: Slots::with_hasher(known, max_dynamic, RandomState::default()),
            registrar,
            on_panic,
        }
    }

    fn counter(&self, service: &str, method: &str) -> metrics::Counter {
        self.registrar
            .with(|recorder| register(recorder, service, method))
    }

    /// Where an RPC stands, found once at `call`: its slot (a path without one earns it by
    /// being called, as palisade-metrics' do), or (rare: a path without a slot) the path
    /// itself, kept for the report.
    #[inline]
    pub(crate) fn site<B>(&self, request: &http::Request<B>) -> Site {
        let path = request.uri().path();
        match self.slots.get(path) {
            Some((id, _)) => Site::Slot(id),
            None => self.site_without_slot(request.uri()),
        }
    }

    #[cold]
    fn site_without_slot(&self, uri: &http::Uri) -> Site {
        match self.slots.admit(uri.path(), Labels::of) {
            Some((id, _)) => Site::Slot(id),
            None => Site::Path(uri.path_and_query().map(|path| Box::new(path.clone()))),
        }
    }

    /// Whether the RPC is skipped (its panics are not caught).
    #[inline]
    pub(crate) fn skips<B>(&self, request: &http::Request<B>) -> bool {
        self.skip
            .as_ref()
            .is_some_and(|skip| skip.matches_path(request.uri().path()))
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("skip", &self.skip)
            .field("max_message_len", &self.max_message_len)
            .field("slots", &self.slots)
            .field("registrar", &self.registrar)
            .field("on_panic", &self.on_panic.is_some())
            .finish()
    }
}

fn register(recorder: &dyn Recorder, service: &str, method: &str) -> metrics::Counter {
    method_counter(recorder, PANICS_TOTAL, service, method, &METADATA)
}

/// An RPC's place in the layer's table.
#[derive(Clone, Debug)]
pub(crate) enum Site {
    Slot(SlotId),
    // Boxed: rare, and it keeps every RPC's future and body small.
    Path(Option<Box<PathAndQuery>>),
}

/// What a watched RPC carries from `call` to its end: enough to report a panic.
#[derive(Clone, Debug)]
pub(crate) struct Watch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) site: Site,
}

impl Watch {
    /// Logs, counts and hands the panic to the hook (once: each caller reports a payload once),
    /// then drops the payload.
    pub(crate) fn report(&self, stage: PanicStage, payload: Box<dyn Any + Send>) {
        let shared = &*self.shared;
        let message = bounded(payload_message(payload.as_ref()), shared.max_message_len);
        let (log_service, log_method, counted) = match &self.site {
            Site::Slot(id) => match shared.slots.slot(*id) {
                Some(labels) => (
                    Cow::Borrowed(&*labels.service),
                    Cow::Borrowed(&*labels.method),
                    Some(labels),
                ),
                None => (Cow::Borrowed(UNKNOWN), Cow::Borrowed(UNKNOWN), None),
            },
            Site::Path(path) => {
                let path = path.as_deref().map_or("", PathAndQuery::path);
                match Method::parse(path) {
                    Some(method) => (
                        bounded(method.service(), MAX_PATH_LEN),
                        bounded(method.method(), MAX_PATH_LEN),
                        None,
                    ),
                    None => (Cow::Borrowed(UNKNOWN), Cow::Borrowed(UNKNOWN), None),
                }
            }
        };
        crate::log_panic(&log_service, &log_method, &message, stage.as_str());
        match counted {
            Some(labels) => shared.counter(&labels.service, &labels.method),
            None => shared.counter(UNKNOWN, UNKNOWN),
        }
        .increment(1);
        if let Some(on_panic) = &shared.on_panic {
            on_panic(&PanicReport {
                service: &log_service,
                method: &log_method,
                message: &message,
                stage,
            });
        }
        drop(message);
        quietly(move || drop(payload));
    }
}

/// Runs `f` — the drop of something that panicked already (a payload, a future, a body),
/// whose `Drop` might panic again — without letting a second panic out; the payload of that
/// second panic is leaked rather than dropped (its own `Drop` could panic too).
pub(crate) fn quietly(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        std::mem::forget(payload);
    }
}

/// The message of a panic payload: what `panic!` with a literal or a format gives.
fn payload_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        NON_STRING_PAYLOAD
    }
}

/// `text` cut to at most `max` bytes on a character boundary, `…` appended when cut.
pub(crate) fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// The trailers-only answer to a panic before the response head.
pub(crate) fn rejection() -> Rejection {
    Rejection::new(Code::Internal, MESSAGE).by(NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        assert_eq!(bounded("short", 256), "short");
        assert_eq!(bounded("abcdef", 3), "abc…");
        // 'é' is two bytes: a cut inside it backs off to before it.
        assert_eq!(bounded("aé", 2), "a…");
        assert_eq!(bounded("ééé", 3), "é…");
    }

    #[test]
    fn payload_messages() {
        assert_eq!(payload_message(&"literal"), "literal");
        assert_eq!(payload_message(&String::from("formatted")), "formatted");
        assert_eq!(payload_message(&42_u32), NON_STRING_PAYLOAD);
    }
}
