//! The layer's series and its per-method cache: one lookup of the path finds a method's
//! limits and counter handles.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, atomic::AtomicU64},
};

use metrics::{Counter, Key, Label, Level, Metadata, SharedString};
pub(crate) use palisade_core::recorder::Registrar;
use palisade_core::{
    Method, MethodRegistry, MethodType, Side,
    slots::{AdmissionRule, SlotId, Slots},
};

/// `palisade_ratelimit_allowed_total`: calls let through.
pub const ALLOWED_TOTAL: &str = "palisade_ratelimit_allowed_total";
/// `palisade_ratelimit_rejected_total`: calls rejected (or, in shadow mode, that would have
/// been), streams cut mid-way included.
pub const REJECTED_TOTAL: &str = "palisade_ratelimit_rejected_total";

/// How many methods that are not known may still earn label values of their own, when no
/// registry is given (as palisade-metrics does).
///
/// On a server a method earns them by being called repeatedly (see [`palisade_core::slots`]),
/// so a flood of random paths takes none of them, and its first few calls are counted under
/// `unknown`: without a registry a server shows an `unknown` series beside its methods' own.
/// Give a server's layer the method registry, so that no caller-chosen path ever becomes a
/// label value. On a client, whose paths are its own, a method gets its values at its first
/// call.
pub const DEFAULT_MAX_DYNAMIC_METHODS: usize = 100;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Describes the layer's series to the recorder.
pub(crate) fn describe(registrar: &Registrar) {
    registrar.with(|recorder| {
        recorder.describe_counter(
            ALLOWED_TOTAL.into(),
            None,
            "Calls the rate limit let through.".into(),
        );
        recorder.describe_counter(
            REJECTED_TOTAL.into(),
            None,
            "Calls the rate limit rejected (would have, in shadow mode), streams cut included."
                .into(),
        );
    });
}

/// The counters of one method.
#[derive(Clone)]
pub(crate) struct Counters {
    pub(crate) allowed: Counter,
    pub(crate) rejected: Counter,
}

impl Counters {
    fn new(
        registrar: &Registrar,
        side: Side,
        method: Option<(&str, &str)>,
        method_type: Option<MethodType>,
    ) -> Self {
        let (service, method) = method.unwrap_or(("unknown", "unknown"));
        let labels = vec![
            Label::from_static_parts(
                "grpc_type",
                method_type.map_or("unknown", MethodType::as_str),
            ),
            Label::new("grpc_service", SharedString::from(service.to_owned())),
            Label::new("grpc_method", SharedString::from(method.to_owned())),
            Label::from_static_parts("grpc_component", side.as_str()),
        ];
        let allowed = Key::from_parts(ALLOWED_TOTAL, labels.clone());
        let rejected = Key::from_parts(REJECTED_TOTAL, labels);
        registrar.with(|recorder| Counters {
            allowed: recorder.register_counter(&allowed, &METADATA),
            rejected: recorder.register_counter(&rejected, &METADATA),
        })
    }
}

/// What the layer knows of one method: whether it is exempt, which limits apply with which
/// rule, and its counters.
pub(crate) struct MethodEntry {
    pub(crate) skipped: bool,
    /// `(limit index, rule index)` of every limit applying, in order.
    pub(crate) plan: Box<[(u16, u16)]>,
    /// Whether any of those limits charges per message.
    pub(crate) per_message: bool,
    pub(crate) counters: Counters,
    /// Client only: until when a server's pushback holds this method's calls, in nanoseconds
    /// since the layer's pushback clock started; 0 when none is known to (see `client.rs`).
    pub(crate) held: AtomicU64,
}

impl fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodEntry")
            .field("skipped", &self.skipped)
            .field("plan", &self.plan)
            .field("per_message", &self.per_message)
            .finish_non_exhaustive()
    }
}

/// Computes a method's exemption and plan.
pub(crate) trait Planner {
    fn plan(&self, method: Option<&Method<'_>>) -> (bool, Box<[(u16, u16)]>, bool);
}

/// The most methods first seen at run time that may earn an entry of their own.
pub const MAX_DYNAMIC_METHODS: usize = 10_000;

/// A method's entry as found for one call: in the table, or made for this call only.
#[derive(Debug)]
pub(crate) enum Lookup<'t> {
    Cached(u32, &'t MethodEntry),
    Uncached(Arc<MethodEntry>),
}

impl Lookup<'_> {
    #[inline]
    pub(crate) fn entry(&self) -> &MethodEntry {
        match self {
            Lookup::Cached(_, entry) => entry,
            Lookup::Uncached(entry) => entry,
        }
    }

    /// A handle a future can keep.
    pub(crate) fn to_ref(&self) -> EntryRef {
        match self {
            Lookup::Cached(slot, _) => EntryRef::Cached(*slot),
            Lookup::Uncached(entry) => EntryRef::Uncached(entry.clone()),
        }
    }
}

/// A method's entry, kept by a call that outlives `call` (a backend deciding later, a
/// client waiting).
#[derive(Clone, Debug)]
pub(crate) enum EntryRef {
    Cached(u32),
    Uncached(Arc<MethodEntry>),
}

/// Every method's entry, by request path: the registry's (made at build), those that earned
/// a slot at run time (palisade-core's [`Slots`]: on a server seen repeatedly, on a client at
/// first sight, up to a cap), and entries
/// made per call under `unknown` labels for every other path.
///
/// A lookup is one hash of the path and a probe of plain loads — no lock, no guard, no
/// reference count.
pub(crate) struct MethodTable {
    registrar: Registrar,
    side: Side,
    slots: Slots<MethodEntry, foldhash::fast::RandomState>,
    unknown: Counters,
}

impl MethodTable {
    pub(crate) fn new(
        planner: &impl Planner,
        registrar: Registrar,
        side: Side,
        registry: Option<&MethodRegistry>,
        max_dynamic: Option<usize>,
    ) -> Self {
        let known: Vec<_> = registry
            .into_iter()
            .flat_map(MethodRegistry::iter)
            .collect();
        let max_dynamic = max_dynamic
            .unwrap_or(if known.is_empty() {
                DEFAULT_MAX_DYNAMIC_METHODS
            } else {
                0
            })
            .min(MAX_DYNAMIC_METHODS);
        let unknown = Counters::new(&registrar, side, None, None);
        let mut seen = HashSet::new();
        let entries: Vec<(String, MethodEntry)> = known
            .into_iter()
            .filter_map(|info| {
                let path = format!("/{}/{}", info.service, info.method);
                let method = Method::parse(&path)?;
                if !seen.insert(method.path().to_owned()) {
                    return None;
                }
                let counters = Counters::new(
                    &registrar,
                    side,
                    Some((&info.service, &info.method)),
                    Some(info.method_type),
                );
                let entry = MethodEntry::new(planner, Some(&method), counters);
                Some((path, entry))
            })
            .collect();
        Self {
            // A client's paths are its own: they get a slot at first sight.
            slots: Slots::with_hasher(entries, max_dynamic, Default::default())
                .admission(AdmissionRule::for_side(side)),
            registrar,
            side,
            unknown,
        }
    }

    /// The entry of a request path.
    #[inline]
    pub(crate) fn lookup(&self, planner: &impl Planner, path: &str) -> Lookup<'_> {
        match self.slots.get(path) {
            Some((slot, entry)) => Lookup::Cached(slot.index(), entry),
            None => self.miss(planner, path),
        }
    }

    /// The entry in a slot handed out by [`lookup`](Self::lookup).
    #[inline]
    fn get(&self, slot: u32) -> &MethodEntry {
        self.slots
            .slot(SlotId::from_index(slot))
            .expect("handed-out slots are filled")
    }

    /// The entry an [`EntryRef`] stands for.
    pub(crate) fn resolve<'a>(&'a self, entry: &'a EntryRef) -> &'a MethodEntry {
        match entry {
            EntryRef::Cached(slot) => self.get(*slot),
            EntryRef::Uncached(entry) => entry,
        }
    }

    /// A path not in the table: given a slot once it has earned one and while there is room,
    /// else an entry made for this call.
    #[cold]
    fn miss(&self, planner: &impl Planner, path: &str) -> Lookup<'_> {
        let admitted = self.slots.admit(path, |method| {
            let counters = Counters::new(
                &self.registrar,
                self.side,
                Some((method.service(), method.method())),
                None,
            );
            MethodEntry::new(planner, Some(method), counters)
        });
        if let Some((slot, entry)) = admitted {
            return Lookup::Cached(slot.index(), entry);
        }
        Lookup::Uncached(Arc::new(MethodEntry::new(
            planner,
            Method::parse(path).as_ref(),
            self.unknown.clone(),
        )))
    }

    pub(crate) fn known_len(&self) -> usize {
        self.slots.known_len()
    }
}

impl MethodEntry {
    fn new(planner: &impl Planner, method: Option<&Method<'_>>, counters: Counters) -> Self {
        let (skipped, plan, per_message) = planner.plan(method);
        Self {
            skipped,
            plan,
            per_message,
            counters,
            held: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodTable")
            .field("known", &self.slots.known_len())
            .field("dynamic", &self.slots.dynamic_len())
            .field("max_dynamic", &self.slots.max_dynamic())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    struct NoPlan;

    impl Planner for NoPlan {
        fn plan(&self, _: Option<&Method<'_>>) -> (bool, Box<[(u16, u16)]>, bool) {
            (false, Box::new([]), false)
        }
    }

    #[test]
    fn after_a_flood_of_random_paths_a_real_method_gets_its_own_labels() {
        let recorder = Arc::new(DebuggingRecorder::new());
        let snapshotter = recorder.snapshotter();
        let table = MethodTable::new(
            &NoPlan,
            Registrar::Recorder(recorder),
            Side::Server,
            None,
            None,
        );
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let path = format!("/scan{}.Svc/Random{}", state % 1000, state >> 24);
            let lookup = table.lookup(&NoPlan, &path);
            lookup.entry().counters.allowed.increment(1);
        }
        for _ in 0..32 {
            let lookup = table.lookup(&NoPlan, "/pkg.Orders/List");
            lookup.entry().counters.allowed.increment(1);
        }
        assert!(matches!(
            table.lookup(&NoPlan, "/pkg.Orders/List"),
            Lookup::Cached(..)
        ));

        let allowed: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == ALLOWED_TOTAL)
            .map(|(key, _, _, value)| {
                let method = key
                    .key()
                    .labels()
                    .find(|label| label.key() == "grpc_method")
                    .map(|label| label.value().to_owned())
                    .unwrap_or_default();
                let DebugValue::Counter(count) = value else {
                    panic!("a counter")
                };
                (method, count)
            })
            .collect();
        let methods: Vec<&str> = allowed.iter().map(|(m, _)| m.as_str()).collect();
        assert!(methods.contains(&"List"), "{methods:?}");
        // No random path, seen once, took a label value of its own.
        assert!(
            methods.iter().all(|m| ["List", "unknown"].contains(m)),
            "{methods:?}"
        );
        let list = allowed.iter().find(|(m, _)| m == "List").unwrap().1;
        assert!(list > 0);
    }
}
