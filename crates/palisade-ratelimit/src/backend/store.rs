//! The local backend's keyed state: a sharded hash table of GCRA states that stays bounded.
//!
//! Each tracked key costs one 24-byte entry — a 128-bit keyed hash of the key (never the key
//! itself) and governor's theoretical arrival time — plus hashbrown's control byte and spare
//! capacity: at most 64 bytes per key right after a table doubles. So a limiter holding its
//! cap of `max_keys` keys uses at most `64 × max_keys` bytes, whatever the keys' lengths.
//!
//! Idle keys go without a cleanup loop: a key whose bucket is full again (idle for the
//! quota's refill time) is indistinguishable from a new one, and each shard drops such keys
//! when its traffic passes by — on an insert, and every 256th call — at most once per sweep
//! period (the refill time, at least one second). A sweep that empties most of a table
//! shrinks it, so memory goes back to the allocator.
//!
//! The cap holds on insert: a full shard first drops its full buckets, then, if still over
//! seven eighths of its share, evicts the buckets closest to full — those whose loss gives the
//! least away — down to seven eighths, so eviction work is amortized over the inserts that
//! follow.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    sync::{
        PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use governor::{clock::Clock, nanos::Nanos, state::StateStore};
use hashbrown::HashTable;

use crate::clock::TokioClock;

/// A key's 128-bit keyed hash: `[0]` picks the shard, `[1]` hashes within it.
pub(crate) type Digest = [u64; 2];

/// Every this many calls on a shard, it checks whether a sweep is due.
const CHECK_EVERY: u32 = 256;

/// Sweeps are at least this far apart (nanoseconds).
const MIN_SWEEP_PERIOD: u64 = 1_000_000_000;

struct Entry {
    key: Digest,
    /// governor's theoretical arrival time, nanoseconds since the limiter's start; 0 = fresh.
    tat: AtomicU64,
}

#[repr(align(64))]
struct Shard {
    table: RwLock<HashTable<Entry>>,
    ops: AtomicU32,
    /// When the next sweep is due, in the store's relative nanoseconds.
    next_sweep: AtomicU64,
}

/// The keyed GCRA state of one rule.
pub(crate) struct Store {
    shards: Box<[Shard]>,
    shard_cap: usize,
    clock: TokioClock,
    /// A reading of `clock` taken just after governor read its start: relative times computed
    /// from it are never ahead of governor's.
    start: AtomicU64,
    sweep_period: u64,
}

impl Store {
    pub(crate) fn new(max_keys: usize, refill_nanos: u64, clock: TokioClock) -> Self {
        let max_keys = max_keys.max(1);
        let shards = shard_count(max_keys);
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    table: RwLock::new(HashTable::new()),
                    ops: AtomicU32::new(0),
                    next_sweep: AtomicU64::new(0),
                })
                .collect(),
            shard_cap: max_keys / shards,
            clock,
            start: AtomicU64::new(0),
            sweep_period: refill_nanos.max(MIN_SWEEP_PERIOD),
        }
    }

    /// Records governor's start (call right after making the limiter).
    pub(crate) fn set_start(&self) {
        self.start
            .store(self.clock.now().as_u64(), Ordering::Relaxed);
    }

    /// How many keys are tracked.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| read(&shard.table).len())
            .sum()
    }

    /// Bytes held by the tables.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| read(&shard.table).allocation_size())
            .sum()
    }

    /// The most keys the store will hold.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// Sweeps every shard now, whether due or not.
    pub(crate) fn sweep_all(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            self.sweep(shard, &mut write(&shard.table), now);
        }
    }

    fn now(&self) -> u64 {
        self.clock
            .now()
            .as_u64()
            .saturating_sub(self.start.load(Ordering::Relaxed))
    }

    fn shard(&self, key: &Digest) -> &Shard {
        &self.shards[key[0] as usize & (self.shards.len() - 1)]
    }

    fn measure<T, E, F>(&self, key: &Digest, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(key);
        let table = read(&shard.table);
        if let Some(entry) = table.find(key[1], |entry| entry.key == *key) {
            let result = update(&entry.tat, &f);
            drop(table);
            if shard.ops.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1 {
                self.sweep_if_due(shard);
            }
            return result;
        }
        drop(table);
        self.insert(shard, key, f)
    }

    #[cold]
    fn insert<T, E, F>(&self, shard: &Shard, key: &Digest, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut table = write(&shard.table);
        if let Some(entry) = table.find(key[1], |entry| entry.key == *key) {
            return update(&entry.tat, &f);
        }
        let (result, tat) = f(None)?;
        let now = self.now();
        if table.len() >= self.shard_cap || now >= shard.next_sweep.load(Ordering::Relaxed) {
            self.sweep(shard, &mut table, now);
            let keep = self.shard_cap - self.shard_cap / 8;
            if table.len() >= self.shard_cap.max(1) {
                let excess = table.len() - keep.min(table.len() - 1);
                evict(&mut table, excess);
            }
        }
        table.insert_unique(
            key[1],
            Entry {
                key: *key,
                tat: AtomicU64::new(tat.as_u64()),
            },
            |entry| entry.key[1],
        );
        Ok(result)
    }

    /// Gives back `nanos` of arrival time to a key (a refunded token).
    pub(crate) fn refund(&self, key: &Digest, nanos: u64) {
        let shard = self.shard(key);
        let table = read(&shard.table);
        if let Some(entry) = table.find(key[1], |entry| entry.key == *key) {
            give_back(&entry.tat, nanos);
        }
    }

    #[cold]
    fn sweep_if_due(&self, shard: &Shard) {
        let now = self.now();
        if now >= shard.next_sweep.load(Ordering::Relaxed) {
            let mut table = write(&shard.table);
            if now >= shard.next_sweep.load(Ordering::Relaxed) {
                self.sweep(shard, &mut table, now);
            }
        }
    }

    /// Drops the keys whose bucket is full (`tat <= now`: the same state as a new key's) and
    /// gives memory back when the table has become mostly empty.
    fn sweep(&self, shard: &Shard, table: &mut HashTable<Entry>, now: u64) {
        table.retain(|entry| entry.tat.load(Ordering::Relaxed) > now);
        if table.capacity() > 4 * table.len().max(16) {
            table.shrink_to(2 * table.len(), |entry| entry.key[1]);
        }
        shard
            .next_sweep
            .store(now.saturating_add(self.sweep_period), Ordering::Relaxed);
    }
}

/// Evicts `count` entries, those with the smallest arrival times: the buckets closest to full,
/// whose loss gives the fewest tokens away.
fn evict(table: &mut HashTable<Entry>, count: usize) {
    if count == 0 {
        return;
    }
    let mut tats: Vec<u64> = table
        .iter()
        .map(|entry| entry.tat.load(Ordering::Relaxed))
        .collect();
    let count = count.min(tats.len());
    let (below, &mut threshold, _) = tats.select_nth_unstable(count - 1);
    // Ties at the threshold: evict only as many as needed.
    let mut at_threshold = count - below.iter().filter(|&&tat| tat < threshold).count();
    table.retain(|entry| {
        let tat = entry.tat.load(Ordering::Relaxed);
        if tat < threshold {
            false
        } else if tat == threshold && at_threshold > 0 {
            at_threshold -= 1;
            false
        } else {
            true
        }
    });
}

/// governor's compare-and-swap step on one key's state, as its `InMemoryState` does it.
#[inline]
fn update<T, E, F>(tat: &AtomicU64, f: &F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let mut prev = tat.load(Ordering::Acquire);
    loop {
        let (result, next) = f(NonZeroU64::new(prev).map(|tat| Nanos::from(tat.get())))?;
        match tat.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
    }
}

/// Moves an arrival time back by `nanos` (never to the fresh state's 0: at most to "full
/// since the start", which behaves the same).
pub(crate) fn give_back(tat: &AtomicU64, nanos: u64) {
    let _ = tat.fetch_update(Ordering::Release, Ordering::Relaxed, |tat| {
        (tat != 0).then(|| tat.saturating_sub(nanos).max(1))
    });
}

/// The single state of a direct (unkeyed) limiter, shared with the limiter for refunds.
#[derive(Clone, Default)]
pub(crate) struct Cell(pub(crate) std::sync::Arc<AtomicU64>);

impl StateStore for Cell {
    type Key = governor::state::NotKeyed;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, _: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        update(&self.0, &f)
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cell({})", self.0.load(Ordering::Relaxed))
    }
}

/// Shards: enough to spread the cores' traffic (4 per core, 16 to 64), no more than one per
/// 1 024 keys of cap, a power of two.
fn shard_count(max_keys: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(4, NonZeroUsize::get);
    let by_cores = (cores * 4).next_power_of_two().clamp(16, 64);
    let by_size = prev_power_of_two((max_keys / 1024).max(1));
    by_cores.min(by_size)
}

fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The store as governor's state store (it owns its state store; the limiter keeps a second
/// handle for sizes and sweeps).
pub(crate) struct SharedStore(pub(crate) std::sync::Arc<Store>);

impl StateStore for SharedStore {
    type Key = Digest;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &Digest, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure(key, f)
    }
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.0.shards.len())
            .field("capacity", &self.0.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(tat: u64) -> impl Fn(Option<Nanos>) -> Result<((), Nanos), ()> {
        move |_| Ok(((), Nanos::from(tat)))
    }

    #[test]
    fn entries_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn shard_counts_are_powers_of_two_within_the_cap() {
        for max in [1, 10, 1000, 5000, 100_000, 1_000_000, usize::MAX / 2] {
            let n = shard_count(max);
            assert!(n.is_power_of_two(), "{max}: {n}");
            assert!(n <= 64 && (n == 1 || max / n >= 1024), "{max}: {n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_eviction_takes_the_fullest_buckets() {
        let store = Store::new(64, 1_000_000_000, TokioClock::new());
        store.set_start();
        assert_eq!(store.capacity(), 64);
        // 64 keys, key i with arrival time far ahead (busy) for even i, soon (nearly full) for odd.
        for i in 0..64u64 {
            let tat = if i % 2 == 0 { 1_000_000_000_000 } else { 1 + i };
            store.measure(&[0, i], fresh(tat)).unwrap();
        }
        assert_eq!(store.len(), 64);
        // One more evicts 1/8 of the shard (plus room for the new key), the fullest first.
        store.measure(&[0, 1000], fresh(5)).unwrap();
        assert!(store.len() <= 64 - 64 / 8 + 1, "{}", store.len());
        let table = read(&store.shards[0].table);
        for i in (0..64u64).step_by(2) {
            assert!(
                table.find(i, |e| e.key == [0, i]).is_some(),
                "busy key {i} evicted"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_swept_and_memory_returned() {
        let store = Store::new(100_000, 1_000_000_000, TokioClock::new());
        store.set_start();
        for i in 0..10_000u64 {
            store.measure(&[i, i], fresh(500_000_000)).unwrap();
        }
        assert_eq!(store.len(), 10_000);
        assert!(store.allocated_bytes() >= 10_000 * 24);
        // Not yet full again: nothing goes.
        store.sweep_all();
        assert_eq!(store.len(), 10_000);
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        store.sweep_all();
        assert_eq!(store.len(), 0);
        assert_eq!(store.allocated_bytes(), 0);
    }
}
