//! The layer's configuration, shared by every service the layer makes.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use http::{HeaderMap, HeaderName, HeaderValue};
use palisade_core::{Code, Matcher, MethodRegistry, Side, code::ALL_CODES};
use tracing::Level;

use crate::{
    level::{default_client_level, default_server_level, level_enabled},
    methods::{Known, Methods},
    writer::LogWriter,
};

/// The default bound on `grpc.message` and on each logged metadata value, in bytes.
pub(crate) const DEFAULT_MAX_MESSAGE_LEN: usize = 512;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) side: Side,
    /// The level of the finish event for each code, indexed by code number.
    levels: [Level; 17],
    /// The most severe level in `levels`: if it is disabled, no finish event can be written.
    most_severe: Level,
    pub(crate) span_level: Level,
    pub(crate) log_start: bool,
    pub(crate) skip: Option<Matcher>,
    sample_ok: u64,
    /// Shared by every clone, so that sampling counts calls across connections.
    sampled: Arc<AtomicU64>,
    allowed: Vec<HeaderName>,
    secrets: Vec<HeaderName>,
    /// `allowed` minus palisade-core's secret headers and `secrets`.
    metadata: Arc<[HeaderName]>,
    pub(crate) max_message_len: usize,
    /// The registry's methods, found by path, each with its line's fields rendered.
    methods: Option<Arc<Methods>>,
    /// Where the access-log lines go, written by this crate; `None`: as `tracing` events.
    pub(crate) access_log: Option<LogWriter>,
}

impl Config {
    pub(crate) fn new(side: Side) -> Self {
        let mut config = Self {
            side,
            levels: [Level::INFO; 17],
            most_severe: Level::INFO,
            // A client's span follows its OK level: nothing it writes for a successful call,
            // and nothing under it, shows at `info` (a server's handler logs under its span).
            span_level: match side {
                Side::Server => Level::INFO,
                Side::Client => Level::DEBUG,
            },
            log_start: false,
            skip: None,
            sample_ok: 1,
            sampled: Arc::new(AtomicU64::new(0)),
            allowed: Vec::new(),
            secrets: Vec::new(),
            metadata: Arc::new([]),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            methods: None,
            access_log: None,
        };
        match side {
            Side::Server => config.set_levels(default_server_level),
            Side::Client => config.set_levels(default_client_level),
        }
        config
    }

    pub(crate) fn set_levels(&mut self, f: impl Fn(Code) -> Level) {
        for code in ALL_CODES {
            self.levels[code as usize] = f(code);
        }
        self.most_severe = self.levels.iter().copied().min().unwrap_or(Level::ERROR);
    }

    /// The finish event's level for a code.
    pub(crate) fn level(&self, code: Code) -> Level {
        self.levels[code as usize]
    }

    pub(crate) fn set_sample_ok(&mut self, one_in: u64) {
        self.sample_ok = one_in.max(1);
    }

    /// Whether this OK call is the one in N that is logged.
    pub(crate) fn sample_ok(&self) -> bool {
        self.sample_ok == 1
            || self
                .sampled
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.sample_ok)
    }

    pub(crate) fn allow_metadata(&mut self, names: impl IntoIterator<Item = HeaderName>) {
        self.allowed.extend(names);
        self.update_metadata();
    }

    pub(crate) fn secret_metadata(&mut self, names: impl IntoIterator<Item = HeaderName>) {
        self.secrets.extend(names);
        self.update_metadata();
    }

    fn update_metadata(&mut self) {
        let mut effective: Vec<HeaderName> = Vec::new();
        for name in &self.allowed {
            if !palisade_core::headers::is_secret(name)
                && !self.secrets.contains(name)
                && !effective.contains(name)
            {
                effective.push(name.clone());
            }
        }
        self.metadata = effective.into();
    }

    pub(crate) fn set_registry(&mut self, registry: &MethodRegistry) {
        self.methods = Some(Arc::new(Methods::new(registry, self.side)));
    }

    /// The index of the known method at a request path.
    pub(crate) fn known_method(&self, path: &str) -> Option<u32> {
        self.methods.as_deref()?.get(path)
    }

    /// The known method of an index [`known_method`](Self::known_method) returned.
    pub(crate) fn known(&self, index: u32) -> &Known {
        let methods = self
            .methods
            .as_deref()
            .expect("a method index comes from the table");
        &methods[index]
    }

    /// Whether anything this layer writes can be enabled right now: the span, or the finish
    /// event at its most severe level (the start event's level is never more severe).
    pub(crate) fn active(&self) -> bool {
        level_enabled(self.most_severe.min(self.span_level))
    }

    /// The allow-listed metadata of a request; `None` (and no allocation) when there is none.
    pub(crate) fn collect_metadata(
        &self,
        headers: &HeaderMap,
    ) -> Option<Box<[(HeaderName, HeaderValue)]>> {
        if self.metadata.is_empty() {
            return None;
        }
        let mut found = Vec::new();
        for name in self.metadata.iter() {
            for value in headers.get_all(name) {
                found.push((name.clone(), value.clone()));
            }
        }
        (!found.is_empty()).then(|| found.into_boxed_slice())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("side", &self.side)
            .field("levels", &self.levels)
            .field("span_level", &self.span_level)
            .field("log_start", &self.log_start)
            .field("skip", &self.skip)
            .field("sample_ok", &self.sample_ok)
            .field("metadata", &self.metadata)
            .field("secret_metadata", &self.secrets)
            .field("max_message_len", &self.max_message_len)
            .field("registry", &self.methods.as_ref().map(|m| m.len()))
            .field("access_log", &self.access_log)
            .finish()
    }
}
