//! Bounded slots for request paths: which methods get label values (and cached entries) of
//! their own, so that paths chosen by callers can grow neither a layer's memory nor the number
//! of series it exports.
//!
//! [`Slots`] holds the methods known in advance (from a [`MethodRegistry`](crate::MethodRegistry)
//! or an allow-list), placed at build, and up to `max_dynamic` methods first seen at run time.
//! A method not known in advance does not get a slot on first sight: it must **earn** it, by
//! being seen [`ADMISSION_THRESHOLD`] times while the counts of recent sightings decay (every
//! count is halved each [`ADMISSION_WINDOW`] sightings of paths without a slot). A steadily
//! used method earns its slot within a few calls, even under a flood of random paths, while
//! paths seen once or twice — what a scan or an attacker sends — never do, so they cannot use
//! up the slots before the real methods arrive. Until then, and for every path once the slots
//! are all taken, the caller records the path under its `unknown` values.
//!
//! That is [`AdmissionRule::Frequency`], for servers, whose paths are chosen by callers. On a
//! client the paths are the program's own, so [`AdmissionRule::FirstSight`] gives a method its slot
//! the first time it is seen ([`AdmissionRule::for_side`] picks by [`Side`]).
//!
//! Without a registry, a server's layers therefore count a method's first few calls (until it
//! has earned its slot) under `unknown`, and show an `unknown` series beside the method's own:
//! give the layers the method registry.
//!
//! A series, once exported, cannot be taken back, so a slot is never given up: on a server
//! exposed to untrusted callers, give the layers the method registry and leave the dynamic
//! slots at 0 (their default with a registry), so that no caller-chosen path ever becomes a
//! label value.
//!
//! # Example
//!
//! ```
//! use palisade_core::slots::{ADMISSION_THRESHOLD, Slots};
//!
//! // One known method, room for 10 more.
//! let slots: Slots<String> =
//!     Slots::new([("/pkg.Greeter/SayHello".to_owned(), "greeter".to_owned())], 10);
//! assert_eq!(slots.get("/pkg.Greeter/SayHello").unwrap().1, "greeter");
//!
//! // A path seen once does not get a slot; one seen repeatedly does.
//! assert!(slots.admit("/scan.Random/X1", |m| m.method().to_owned()).is_none());
//! let mut admitted = None;
//! for _ in 0..ADMISSION_THRESHOLD {
//!     admitted = slots.admit("/pkg.Orders/List", |m| m.method().to_owned());
//! }
//! let (id, value) = admitted.unwrap();
//! assert_eq!(value, "List");
//! assert_eq!(slots.slot(id).unwrap(), "List");
//! assert!(slots.get("/scan.Random/X1").is_none());
//! ```

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
};

use crate::{Method, Side};

/// How a path without a slot earns one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdmissionRule {
    /// By being seen [`ADMISSION_THRESHOLD`] times while counts decay: for paths chosen by
    /// callers (a server's).
    #[default]
    Frequency,
    /// On first sight: for paths the program chooses itself (a client's).
    FirstSight,
}

impl AdmissionRule {
    /// [`AdmissionRule::Frequency`] on [`Side::Server`], [`AdmissionRule::FirstSight`] on
    /// [`Side::Client`].
    pub const fn for_side(side: Side) -> Self {
        match side {
            Side::Server => AdmissionRule::Frequency,
            Side::Client => AdmissionRule::FirstSight,
        }
    }
}

/// Paths longer than this never get a slot of their own.
pub const MAX_PATH_LEN: usize = 256;

/// How many recent sightings earn a path without a slot one of its own.
pub const ADMISSION_THRESHOLD: u8 = 8;

/// Every count of recent sightings is halved each time this many paths without a slot have
/// been seen: a path must come back at least every few hundred such calls to earn a slot.
pub const ADMISSION_WINDOW: usize = 1024;

/// Rows of the sketch counting sightings.
const DEPTH: usize = 4;
/// Counters per row: one per sighting in a window, on average, so a path seen once reads as
/// a count near 1.
const WIDTH: usize = ADMISSION_WINDOW;
/// Counts saturate here (well above the threshold).
const MAX_COUNT: u8 = 63;

/// Identifies a filled slot of a [`Slots`] table, to find its value again without the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(u32);

impl SlotId {
    /// The slot's index, to keep in a compact form.
    pub fn index(self) -> u32 {
        self.0
    }

    /// The slot of an index [`SlotId::index`] gave; an index never handed out finds no value.
    pub fn from_index(index: u32) -> Self {
        Self(index)
    }
}

struct Slot<V> {
    path: Box<str>,
    value: V,
}

/// A fixed-size table of values by request path: the known methods, placed at build, and up to
/// `max_dynamic` methods that earned a slot at run time. See the [module docs](self).
///
/// Lookups are a hash of the path and a probe of plain loads: no lock, no reference count.
/// Filling a slot takes a lock; slots are never emptied.
pub struct Slots<V, S = RandomState> {
    hasher: S,
    slots: Box<[OnceLock<Slot<V>>]>,
    mask: usize,
    known: usize,
    dynamic: AtomicUsize,
    max_dynamic: usize,
    insert: Mutex<()>,
    sketch: Option<Sketch>,
}

impl<V> Slots<V> {
    /// A table of the `known` `(path, value)` pairs (the first of duplicates kept) with room
    /// for `max_dynamic` more, hashed with std's SipHash.
    pub fn new(known: impl IntoIterator<Item = (String, V)>, max_dynamic: usize) -> Self {
        Self::with_hasher(known, max_dynamic, RandomState::new())
    }
}

impl<V, S: BuildHasher> Slots<V, S> {
    /// How paths earn the dynamic slots: [`AdmissionRule::Frequency`] unless set.
    pub fn admission(mut self, admission: AdmissionRule) -> Self {
        self.sketch = match admission {
            AdmissionRule::Frequency => self
                .sketch
                .or_else(|| (self.max_dynamic > 0).then(Sketch::new)),
            AdmissionRule::FirstSight => None,
        };
        self
    }

    /// [`Slots::new`] with a hasher of your choice.
    pub fn with_hasher(
        known: impl IntoIterator<Item = (String, V)>,
        max_dynamic: usize,
        hasher: S,
    ) -> Self {
        let known: Vec<(String, V)> = known.into_iter().collect();
        let capacity = (2 * (known.len() + max_dynamic)).next_power_of_two().max(8);
        let mut table = Self {
            hasher,
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            mask: capacity - 1,
            known: 0,
            dynamic: AtomicUsize::new(0),
            max_dynamic,
            insert: Mutex::new(()),
            sketch: (max_dynamic > 0).then(Sketch::new),
        };
        for (path, value) in known {
            if table.place(&path, value).is_some() {
                table.known += 1;
            }
        }
        table
    }

    /// The slot of `path`, if it has one.
    #[inline]
    pub fn get(&self, path: &str) -> Option<(SlotId, &V)> {
        let mut index = self.hasher.hash_one(path) as usize & self.mask;
        loop {
            match self.slots[index].get() {
                Some(slot) if *slot.path == *path => {
                    return Some((SlotId(index as u32), &slot.value));
                }
                Some(_) => index = (index + 1) & self.mask,
                None => return None,
            }
        }
    }

    /// The value of a slot [`get`](Self::get) or [`admit`](Self::admit) handed out.
    #[inline]
    pub fn slot(&self, id: SlotId) -> Option<&V> {
        self.slots
            .get(id.0 as usize)
            .and_then(OnceLock::get)
            .map(|slot| &slot.value)
    }

    /// Counts a sighting of `path`, which has no slot yet, and gives it one — with the value
    /// `make` returns — once it has earned it (at once with [`AdmissionRule::FirstSight`]) and
    /// while there is room. `None` when the path
    /// keeps no slot: not a gRPC method, longer than [`MAX_PATH_LEN`], seen too rarely so far,
    /// or the dynamic slots all taken.
    #[cold]
    pub fn admit(&self, path: &str, make: impl FnOnce(&Method<'_>) -> V) -> Option<(SlotId, &V)> {
        if path.len() > MAX_PATH_LEN || self.dynamic.load(Ordering::Relaxed) >= self.max_dynamic {
            return None;
        }
        let method = Method::parse(path)?;
        self.admit_sighted(self.sketch.as_ref(), path, || make(&method))
    }

    /// [`admit`](Self::admit) for keys that are not request paths (an authority, a tenant):
    /// counts a sighting of `key`, which has no slot yet, and gives it one — with the value
    /// `make` returns — once it has earned it and while there is room. `None` when the key
    /// keeps no slot: longer than [`MAX_PATH_LEN`], seen too rarely so far, or the dynamic
    /// slots all taken.
    #[cold]
    pub fn admit_key(&self, key: &str, make: impl FnOnce() -> V) -> Option<(SlotId, &V)> {
        if key.len() > MAX_PATH_LEN || self.dynamic.load(Ordering::Relaxed) >= self.max_dynamic {
            return None;
        }
        self.admit_sighted(self.sketch.as_ref(), key, make)
    }

    fn admit_sighted(
        &self,
        sketch: Option<&Sketch>,
        path: &str,
        make: impl FnOnce() -> V,
    ) -> Option<(SlotId, &V)> {
        // Without a sketch (first-sight admission) every sighting earns the slot.
        if let Some(sketch) = sketch
            && !sketch.sighting(self.hasher.hash_one(path))
        {
            return None;
        }
        let _guard = self.insert.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = self.get(path) {
            return Some(found);
        }
        if self.dynamic.load(Ordering::Relaxed) >= self.max_dynamic {
            return None;
        }
        let id = self.place(path, make())?;
        self.dynamic.fetch_add(1, Ordering::Relaxed);
        let value = self.slot(id)?;
        Some((id, value))
    }

    /// Puts a value in the first free slot of its probe sequence (under the insert lock, or at
    /// build); `None` when the path is there already.
    fn place(&self, path: &str, value: V) -> Option<SlotId> {
        let mut index = self.hasher.hash_one(path) as usize & self.mask;
        loop {
            match self.slots[index].get() {
                Some(slot) if *slot.path == *path => return None,
                Some(_) => index = (index + 1) & self.mask,
                None => {
                    let slot = Slot {
                        path: path.into(),
                        value,
                    };
                    return self.slots[index]
                        .set(slot)
                        .is_ok()
                        .then_some(SlotId(index as u32));
                }
            }
        }
    }

    /// How many paths were placed at build.
    pub fn known_len(&self) -> usize {
        self.known
    }

    /// How many paths earned a slot at run time so far.
    pub fn dynamic_len(&self) -> usize {
        self.dynamic.load(Ordering::Relaxed)
    }

    /// The most paths that may earn a slot at run time.
    pub fn max_dynamic(&self) -> usize {
        self.max_dynamic
    }
}

impl<V, S> fmt::Debug for Slots<V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("known", &self.known)
            .field("dynamic", &self.dynamic.load(Ordering::Relaxed))
            .field("max_dynamic", &self.max_dynamic)
            .finish()
    }
}

/// A count-min sketch of recent sightings, with conservative updates and halving: small
/// (4 KiB), lock-free, and it never allocates per path.
struct Sketch {
    counters: Box<[AtomicU8]>,
    sightings: AtomicUsize,
}

impl Sketch {
    fn new() -> Self {
        Self {
            counters: (0..DEPTH * WIDTH).map(|_| AtomicU8::new(0)).collect(),
            sightings: AtomicUsize::new(0),
        }
    }

    /// Counts one sighting of the path hashed to `hash`; true once its count reaches the
    /// threshold.
    fn sighting(&self, hash: u64) -> bool {
        // Four indices from independent bits of one hash: 16 bits a row. (Deriving them as
        // `low + row * high` modulo the width would make all four depend on only 20 bits, so
        // about one random path in a million would share every counter of a real method and
        // ride on its count.)
        const _: () = assert!(WIDTH.is_power_of_two() && WIDTH <= 1 << 16 && DEPTH * 16 <= 64);
        let indices: [usize; DEPTH] =
            std::array::from_fn(|row| row * WIDTH + ((hash >> (row * 16)) as usize & (WIDTH - 1)));
        let min = indices
            .iter()
            .map(|&i| self.counters[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if min < MAX_COUNT {
            // Conservative update: only the counters at the minimum grow, so paths sharing a
            // counter inflate each other's counts as little as possible.
            for &i in &indices {
                let _ = self.counters[i].compare_exchange(
                    min,
                    min + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        let seen = self
            .sightings
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if seen.is_multiple_of(ADMISSION_WINDOW) {
            self.halve();
        }
        min.saturating_add(1) >= ADMISSION_THRESHOLD
    }

    /// Ages every count: concurrent updates may be lost, which only makes counts smaller.
    #[cold]
    fn halve(&self) {
        for counter in self.counters.iter() {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: reproducible random paths.
    fn random_paths(seed: u64) -> impl Iterator<Item = String> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("/scan{}.Svc/M{}", state % 100_000, state >> 20)
        })
    }

    #[test]
    fn known_paths_are_found_and_duplicates_ignored() {
        let slots: Slots<u32> = Slots::new(
            [
                ("/a.S/M".to_owned(), 1),
                ("/a.S/N".to_owned(), 2),
                ("/a.S/M".to_owned(), 3),
            ],
            0,
        );
        assert_eq!(slots.known_len(), 2);
        assert_eq!(slots.get("/a.S/M").map(|(_, v)| *v), Some(1));
        assert_eq!(slots.get("/a.S/N").map(|(_, v)| *v), Some(2));
        assert!(slots.get("/a.S/O").is_none());
        // No dynamic room: nothing is ever admitted.
        for _ in 0..100 {
            assert!(slots.admit("/a.S/O", |_| 9).is_none());
        }
    }

    #[test]
    fn after_a_flood_of_random_paths_a_steady_method_earns_a_slot() {
        let slots: Slots<String> = Slots::new([], 100);
        for path in random_paths(0x9E37_79B9_7F4A_7C15).take(10_000) {
            assert!(
                slots.admit(&path, |m| m.path().to_owned()).is_none(),
                "{path}"
            );
        }
        assert_eq!(slots.dynamic_len(), 0, "no one-off path took a slot");
        let mut admitted = None;
        for _ in 0..2 * usize::from(ADMISSION_THRESHOLD) {
            admitted = admitted.or_else(|| {
                slots
                    .admit("/pkg.Orders/List", |m| m.path().to_owned())
                    .map(|(id, _)| id)
            });
        }
        let id = admitted.expect("a steadily used method earns a slot");
        assert_eq!(slots.slot(id).map(String::as_str), Some("/pkg.Orders/List"));
        assert_eq!(slots.get("/pkg.Orders/List").map(|(i, _)| i), Some(id));
        assert_eq!(slots.dynamic_len(), 1);
    }

    #[test]
    fn a_method_interleaved_with_a_flood_earns_a_slot() {
        let slots: Slots<()> = Slots::new([], 100);
        let mut admitted = false;
        for (i, path) in random_paths(7).take(20_000).enumerate() {
            let _ = slots.admit(&path, |_| ());
            if i % 50 == 0 {
                admitted |= slots.admit("/pkg.Orders/List", |_| ()).is_some();
            }
        }
        assert!(admitted);
        assert_eq!(slots.dynamic_len(), 1, "only the steady method");
    }

    #[test]
    fn first_sight_admission_gives_a_slot_at_once_up_to_the_cap() {
        let slots: Slots<()> = Slots::new([], 2).admission(AdmissionRule::for_side(Side::Client));
        assert!(slots.admit("/pkg.Orders/List", |_| ()).is_some());
        assert!(slots.get("/pkg.Orders/List").is_some());
        assert!(slots.admit("/pkg.Orders/Get", |_| ()).is_some());
        assert!(slots.admit("/pkg.Orders/Third", |_| ()).is_none(), "full");
        assert!(slots.admit("not a method", |_| ()).is_none());
        assert_eq!(slots.dynamic_len(), 2);
        // A server's table keeps frequency admission.
        let slots: Slots<()> = Slots::new([], 2).admission(AdmissionRule::for_side(Side::Server));
        assert!(slots.admit("/pkg.Orders/List", |_| ()).is_none());
        // No room, either way: nothing.
        let slots: Slots<()> = Slots::new([], 0).admission(AdmissionRule::FirstSight);
        assert!(slots.admit("/pkg.Orders/List", |_| ()).is_none());
    }

    #[test]
    fn bad_paths_and_a_full_table_get_no_slot() {
        let slots: Slots<()> = Slots::new([], 1);
        let long = format!("/a.S/{}", "x".repeat(MAX_PATH_LEN));
        for _ in 0..100 {
            assert!(slots.admit("not a method", |_| ()).is_none());
            assert!(slots.admit(&long, |_| ()).is_none());
            let _ = slots.admit("/a.S/First", |_| ());
            assert!(slots.admit("/a.S/Second", |_| ()).is_none());
        }
        assert!(slots.get("/a.S/First").is_some());
        assert_eq!(slots.dynamic_len(), 1);
    }

    #[test]
    fn keys_that_are_not_paths_earn_slots_the_same_way() {
        let slots: Slots<u32> = Slots::new([], 1);
        let mut made = 0;
        for i in 0..100 {
            // Seen once each: never earn one.
            let _ = slots.admit_key(&format!("x{i}.evil"), || 0);
            if slots
                .admit_key("b.internal:50051", || {
                    made += 1;
                    7
                })
                .is_some()
            {
                break;
            }
        }
        assert_eq!(made, 1);
        assert_eq!(slots.get("b.internal:50051").map(|(_, v)| *v), Some(7));
        assert!(slots.admit_key("another:1", || 0).is_none(), "full");
        assert_eq!(slots.dynamic_len(), 1);
    }
}
