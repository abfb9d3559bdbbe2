//! Per-key limits: what a call is keyed by ([`Key`]), and the bounded table of keys' counts.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use http::HeaderName;
use palisade_core::{Call, Peer, Rpc};

use crate::{gate::Gate, series::Series};

/// What a per-key limit keeps a count per ([`LimitBuilder::per_key`](crate::LimitBuilder::per_key)).
///
/// Keys are never label values: every key of a limiter shares its series. A call without a key
/// (no such metadata, no verified subject, no peer address) goes to the limiter's overflow
/// count, as do keys longer than [`MAX_KEY_LEN`] and new keys while the table is full.
///
/// ```
/// use http::HeaderName;
/// use palisade_limit::Key;
///
/// let tenant = Key::metadata(HeaderName::from_static("x-tenant"));
/// let caller = Key::subject();
/// let peer = Key::peer_ip();
/// # let _ = (tenant, caller, peer);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(Source);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Metadata(HeaderName),
    PeerIp,
    Subject,
}

impl Key {
    /// The value of the request metadata (header) `name`, when it is visible ASCII.
    pub fn metadata(name: HeaderName) -> Self {
        Key(Source::Metadata(name))
    }

    /// The caller's IP address.
    pub fn peer_ip() -> Self {
        Key(Source::PeerIp)
    }

    /// The verified subject in palisade-core's per-RPC record ([`Rpc::subject`], written by
    /// palisade-jwt on a server): put the limit after jwt.
    pub fn subject() -> Self {
        Key(Source::Subject)
    }

    fn of<'a>(&self, call: &'a Call<'_>) -> Option<Cow<'a, str>> {
        match &self.0 {
            Source::Metadata(name) => call
                .parts()
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(Cow::Borrowed),
            Source::PeerIp => Peer::remote_addr_of(&call.parts().extensions)
                .map(|addr| Cow::Owned(addr.ip().to_string())),
            Source::Subject => call.record().and_then(Rpc::subject).map(Cow::Borrowed),
        }
    }
}

/// Keys longer than this share the overflow count.
pub const MAX_KEY_LEN: usize = 256;

/// How many keys a per-key limit keeps a count of at once, unless configured
/// ([`LimitBuilder::max_keys`](crate::LimitBuilder::max_keys)).
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The counts of a per-key limit: at most `max_keys` keys; a key with nothing in flight and
/// nobody waiting is dropped when room is needed.
pub(crate) struct Keys {
    pub(crate) key: Key,
    pub(crate) limit: u32,
    pub(crate) max_keys: usize,
    pub(crate) queue: Option<(usize, std::time::Duration)>,
    pub(crate) series: Series,
    pub(crate) overflow: Arc<Gate>,
    pub(crate) table: Mutex<Table>,
}

#[derive(Default)]
pub(crate) struct Table {
    gates: HashMap<Box<str>, Arc<Gate>>,
    /// New keys sent to the overflow count since the last sweep for idle keys.
    since_sweep: usize,
}

impl Keys {
    /// The count of this call's key.
    pub(crate) fn gate(&self, call: &Call<'_>) -> Arc<Gate> {
        let Some(key) = self.key.of(call).filter(|key| key.len() <= MAX_KEY_LEN) else {
            return self.overflow.clone();
        };
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = table.gates.get(key.as_ref()) {
            return gate.clone();
        }
        if table.gates.len() >= self.max_keys {
            // Sweep at most once per sixteenth of the table's size of new keys, so a flood of
            // new keys costs O(16) per call, not a sweep each.
            if table.since_sweep < (self.max_keys / 16).max(1) {
                table.since_sweep += 1;
                return self.overflow.clone();
            }
            table.since_sweep = 0;
            // Idle: held by the table alone (no permit, no waiter, no call deciding).
            table.gates.retain(|_, gate| Arc::strong_count(gate) > 1);
            if table.gates.len() >= self.max_keys {
                return self.overflow.clone();
            }
        }
        let gate = Arc::new(Gate::new(
            crate::gate::Kind::Fixed(self.limit),
            self.queue,
            self.series.clone(),
        ));
        table
            .gates
            .insert(key.into_owned().into_boxed_str(), gate.clone());
        gate
    }

    /// The gates with a count now, the overflow count first.
    pub(crate) fn gates(&self) -> Vec<Arc<Gate>> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(self.overflow.clone())
            .chain(table.gates.values().cloned())
            .collect()
    }

    /// How many keys have a count now.
    pub(crate) fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gates
            .len()
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("key", &self.key)
            .field("limit", &self.limit)
            .field("max_keys", &self.max_keys)
            .field("keys", &self.len())
            .finish()
    }
}
