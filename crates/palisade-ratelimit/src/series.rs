//! The layer's series and its per-method cache: one lookup of the path finds a method's
//! limits and counter handles.

use std::{
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use metrics::{Counter, Key, Label, Level, Metadata, Recorder, SharedString};
use palisade_core::{Method, MethodRegistry, MethodType, Side};

/// `palisade_ratelimit_allowed_total`: calls let through.
pub const ALLOWED_TOTAL: &str = "palisade_ratelimit_allowed_total";
/// `palisade_ratelimit_rejected_total`: calls rejected (or, in shadow mode, that would have
/// been), streams cut mid-way included.
pub const REJECTED_TOTAL: &str = "palisade_ratelimit_rejected_total";

/// How many methods that are not known may still get label values of their own, when no
/// registry is given (as palisade-metrics does).
pub const DEFAULT_MAX_DYNAMIC_METHODS: usize = 100;

/// Paths longer than this never become label values of their own.
const MAX_DYNAMIC_PATH_LEN: usize = 256;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where handles are registered: the `metrics` facade's recorder of the moment, or one given.
#[derive(Clone)]
pub(crate) enum Registrar {
    Facade,
    Recorder(Arc<dyn Recorder + Send + Sync>),
}

impl Registrar {
    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match self {
            Registrar::Facade => metrics::with_recorder(f),
            Registrar::Recorder(recorder) => f(recorder.as_ref()),
        }
    }

    pub(crate) fn describe(&self) {
        self.with(|recorder| {
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
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registrar::Facade => f.write_str("Facade"),
            Registrar::Recorder(_) => f.write_str("Recorder(..)"),
        }
    }
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
    pub(crate) exempt: bool,
    /// `(limit index, rule index)` of every limit applying, in order.
    pub(crate) plan: Box<[(u16, u16)]>,
    /// Whether any of those limits charges per message.
    pub(crate) per_message: bool,
    pub(crate) counters: Counters,
}

impl fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodEntry")
            .field("exempt", &self.exempt)
            .field("plan", &self.plan)
            .field("per_message", &self.per_message)
            .finish_non_exhaustive()
    }
}

/// Computes a method's exemption and plan.
pub(crate) trait Planner {
    fn plan(&self, method: Option<&Method<'_>>) -> (bool, Box<[(u16, u16)]>, bool);
}

/// The most methods first seen at run time that get an entry of their own.
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

struct Slot {
    path: Box<str>,
    entry: MethodEntry,
}

/// Every method's entry, by request path: the registry's (made at build), those first seen
/// at run time up to a cap, and, past it, entries made per call under `unknown` labels.
///
/// An open-addressing table whose slots are allocated at build (twice the entries it may
/// hold) and filled once: a lookup is one hash of the path and a probe of plain loads — no
/// lock, no guard, no reference count.
pub(crate) struct MethodTable {
    registrar: Registrar,
    side: Side,
    hasher: foldhash::fast::RandomState,
    slots: Box<[OnceLock<Slot>]>,
    mask: usize,
    known: usize,
    dynamic: AtomicUsize,
    max_dynamic: usize,
    insert: Mutex<()>,
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
        let capacity = (2 * (known.len() + max_dynamic)).next_power_of_two().max(8);
        let unknown = Counters::new(&registrar, side, None, None);
        let table = Self {
            registrar,
            side,
            hasher: foldhash::fast::RandomState::default(),
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            mask: capacity - 1,
            known: 0,
            dynamic: AtomicUsize::new(0),
            max_dynamic,
            insert: Mutex::new(()),
            unknown,
        };
        let mut count = 0;
        for info in known {
            let path = format!("/{}/{}", info.service, info.method);
            let Some(method) = Method::parse(&path) else {
                continue;
            };
            let counters = Counters::new(
                &table.registrar,
                side,
                Some((&info.service, &info.method)),
                Some(info.method_type),
            );
            if table.place(&path, MethodEntry::new(planner, Some(&method), counters)) {
                count += 1;
            }
        }
        Self {
            known: count,
            ..table
        }
    }

    /// The entry of a request path.
    #[inline]
    pub(crate) fn lookup(&self, planner: &impl Planner, path: &str) -> Lookup<'_> {
        let mut index = self.hasher.hash_one(path) as usize & self.mask;
        loop {
            match self.slots[index].get() {
                Some(slot) if *slot.path == *path => {
                    return Lookup::Cached(index as u32, &slot.entry);
                }
                Some(_) => index = (index + 1) & self.mask,
                None => return self.miss(planner, path),
            }
        }
    }

    /// The entry in a slot handed out by [`lookup`](Self::lookup).
    #[inline]
    fn get(&self, slot: u32) -> &MethodEntry {
        &self.slots[slot as usize]
            .get()
            .expect("handed-out slots are filled")
            .entry
    }

    /// The entry an [`EntryRef`] stands for.
    pub(crate) fn resolve<'a>(&'a self, entry: &'a EntryRef) -> &'a MethodEntry {
        match entry {
            EntryRef::Cached(slot) => self.get(*slot),
            EntryRef::Uncached(entry) => entry,
        }
    }

    /// The lookup an [`EntryRef`] stands for.
    pub(crate) fn lookup_ref(&self, entry: &EntryRef) -> Lookup<'_> {
        match entry {
            EntryRef::Cached(slot) => Lookup::Cached(*slot, self.get(*slot)),
            EntryRef::Uncached(entry) => Lookup::Uncached(entry.clone()),
        }
    }

    /// A path not in the table: added while there is room, else made for this call.
    #[cold]
    fn miss(&self, planner: &impl Planner, path: &str) -> Lookup<'_> {
        let method = Method::parse(path);
        if let Some(method) = &method
            && path.len() <= MAX_DYNAMIC_PATH_LEN
            && self.dynamic.load(Ordering::Relaxed) < self.max_dynamic
        {
            let _guard = self.insert.lock().unwrap_or_else(PoisonError::into_inner);
            if self.dynamic.load(Ordering::Relaxed) < self.max_dynamic {
                let counters = Counters::new(
                    &self.registrar,
                    self.side,
                    Some((method.service(), method.method())),
                    None,
                );
                // Placed unless another call placed it first; either way it is there now.
                if self.place(path, MethodEntry::new(planner, Some(method), counters)) {
                    self.dynamic.fetch_add(1, Ordering::Relaxed);
                }
                return self.lookup(planner, path);
            }
        }
        Lookup::Uncached(Arc::new(MethodEntry::new(
            planner,
            method.as_ref(),
            self.unknown.clone(),
        )))
    }

    /// Puts an entry in the first free slot of its probe sequence (under the insert lock, or
    /// at build); false when the path is there already.
    fn place(&self, path: &str, entry: MethodEntry) -> bool {
        let mut index = self.hasher.hash_one(path) as usize & self.mask;
        loop {
            match self.slots[index].get() {
                Some(slot) if *slot.path == *path => return false,
                Some(_) => index = (index + 1) & self.mask,
                None => {
                    let slot = Slot {
                        path: path.into(),
                        entry,
                    };
                    return self.slots[index].set(slot).is_ok();
                }
            }
        }
    }

    pub(crate) fn known_len(&self) -> usize {
        self.known
    }
}

impl MethodEntry {
    fn new(planner: &impl Planner, method: Option<&Method<'_>>, counters: Counters) -> Self {
        let (exempt, plan, per_message) = planner.plan(method);
        Self {
            exempt,
            plan,
            per_message,
            counters,
        }
    }
}

impl fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodTable")
            .field("known", &self.known)
            .field("dynamic", &self.dynamic.load(Ordering::Relaxed))
            .field("max_dynamic", &self.max_dynamic)
            .finish()
    }
}
