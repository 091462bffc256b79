//! The page cache: every metadata page held in memory — clean (a verified copy of what is on
//! disk), dirty (changed since the last tree sync) and frozen (being written by a sync) — counted
//! against one byte cap (docs/FORMAT.md, V4.7, V4.9).
//!
//! Pages a pin predicate picks (the trees' interior pages, V4.9 "pinned once loaded") are never
//! evicted while clean and are counted apart from the cap, as resident metadata.
//!
//! Only clean pages are evicted, by CLOCK (a page used since the hand last passed gets a second
//! chance). Dirty pages are limited separately: a writer that would dirty more than the dirty
//! limit gets [`CacheFull`] and must wait for a sync, so clean pages always keep at least
//! `cap - 2 × dirty limit`. Frozen pages are shared with the sync that writes them (`Arc`): a
//! writer that changes a frozen page gets its own copy, which is dirty, while the sync keeps the
//! frozen bytes until [`PageCache::release_frozen`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use crate::format::v4::PAGE_BYTES;

/// Bytes of one unit of the cap (docs/FORMAT.md V4.17a "Counting").
const UNIT_BYTES: usize = 64;
/// Units of the cap a page takes (its bookkeeping, under 1 % of it, is not counted).
const UNITS_PER_PAGE: usize = PAGE_BYTES / UNIT_BYTES;
/// Bytes a held sector's bookkeeping takes beside its own (hash entry, ring slot, the `Arc`'s
/// header), counted with it: a compact sector may be smaller than that.
const SECTOR_ENTRY_BYTES: usize = 128;

/// A ring of at least this many slots, more than half of them empty, is tidied
/// ([`PageCache::tidy`]).
const TIDY_SLOTS: usize = 1024;

/// Units of the cap a held sector of `len` bytes takes.
fn sector_units(len: usize) -> usize {
    (len + SECTOR_ENTRY_BYTES).div_ceil(UNIT_BYTES)
}

/// What a cached page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// The same bytes as the copy on disk its parent names.
    Clean,
    /// Changed since the last sync froze its pages.
    Dirty,
    /// Frozen by a sync in flight: written as it is, never changed in place.
    Frozen,
}

/// Adding a dirty page would pass the dirty limit: wait for the sync in flight, then retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFull;

/// Counters of a cache (pages and events since it was made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Clean pages held.
    pub clean: usize,
    /// Dirty pages held.
    pub dirty: usize,
    /// Frozen pages held by syncs (in the cache or only by the sync).
    pub frozen: usize,
    /// Clean pinned pages (interior pages: resident, not counted against the cap).
    pub pinned: usize,
    /// Sectors held (4 KiB parts of map leaves read alone, docs/FORMAT.md V4.17; always
    /// clean, each counted at its held size, V4.17a).
    pub sectors: usize,
    /// Bytes the held sectors are counted at against the cap (their own and their
    /// bookkeeping's, in 64-byte units).
    pub sector_bytes: usize,
    /// Lookups that found their page.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Clean pages evicted to make room.
    pub evictions: u64,
    /// Clean pages not kept because nothing could be evicted.
    pub refused: u64,
}

impl CacheStats {
    /// Bytes of every page counted against the cap.
    #[must_use]
    pub fn bytes(&self) -> usize {
        (self.clean + self.dirty + self.frozen) * PAGE_BYTES + self.sector_bytes
    }

    /// Units counted against the cap.
    fn units(&self) -> usize {
        (self.clean + self.dirty + self.frozen) * UNITS_PER_PAGE + self.sector_bytes / UNIT_BYTES
    }
}

#[derive(Debug)]
struct Entry {
    page: Arc<Vec<u8>>,
    state: PageState,
    referenced: bool,
    ring_at: usize,
    pinned: bool,
    /// A sector, not a page (clean, never pinned, counted at its held size).
    sector: bool,
}

/// The hash of a page key: a multiply-rotate fold of its fields with a 64-bit finalizer (the
/// splitmix64 mix), instead of std's SipHash. Keys are where pages are in the trees, not input
/// anyone chooses, so hash flooding does not apply; a lookup per tree level per pointer
/// change made SipHash about 5 % of a v4 write's CPU time (README, Performance, "Landing in
/// runs, one wake-up per write"). The finalizer matters: first keys are multiples of 1024,
/// whose low bits a plain multiply leaves zero, and the table picks buckets by the low bits.
#[derive(Debug, Default, Clone, Copy)]
struct PageKeyHasher(u64);

impl PageKeyHasher {
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

    fn fold(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(23) ^ value).wrapping_mul(Self::SEED);
    }
}

impl Hasher for PageKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.fold(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.fold(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.fold(value);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Debug)]
struct Inner<K> {
    entries: HashMap<K, Entry, BuildHasherDefault<PageKeyHasher>>,
    ring: Vec<Option<K>>,
    free_ring: Vec<usize>,
    hand: usize,
    stats: CacheStats,
}

/// A capped cache of metadata pages keyed by `K` (the trees key pages by where they are in the
/// tree).
#[derive(Debug)]
pub struct PageCache<K> {
    cap_pages: usize,
    dirty_limit: usize,
    pin: Option<fn(&K) -> bool>,
    inner: Mutex<Inner<K>>,
}

impl<K: Hash + Eq + Copy> PageCache<K> {
    /// A cache of at most `cap_bytes` of pages (at least 4 pages), of which at most a quarter
    /// may be dirty (and as much again frozen).
    #[must_use]
    pub fn new(cap_bytes: usize) -> Self {
        let cap_pages = (cap_bytes / PAGE_BYTES).max(4);
        Self {
            cap_pages,
            dirty_limit: (cap_pages / 4).max(1),
            pin: None,
            inner: Mutex::new(Inner {
                entries: HashMap::default(),
                ring: Vec::new(),
                free_ring: Vec::new(),
                hand: 0,
                stats: CacheStats::default(),
            }),
        }
    }

    /// The same cache with at most `pages` dirty (a sync's size bound; never above a quarter
    /// of the cap).
    #[must_use]
    pub fn with_dirty_limit(mut self, pages: usize) -> Self {
        self.dirty_limit = self.dirty_limit.min(pages.max(1));
        self
    }

    /// The same cache, keeping the clean pages `pin` picks resident (outside the cap).
    #[must_use]
    pub fn with_pinned(mut self, pin: fn(&K) -> bool) -> Self {
        self.pin = Some(pin);
        self
    }

    fn clean_counter(stats: &mut CacheStats, pinned: bool) -> &mut usize {
        if pinned {
            &mut stats.pinned
        } else {
            &mut stats.clean
        }
    }

    /// Pages the cache may hold.
    #[must_use]
    pub fn cap_pages(&self) -> usize {
        self.cap_pages
    }
    /// Dirty pages a writer may make before waiting for a sync.
    #[must_use]
    pub fn dirty_limit(&self) -> usize {
        self.dirty_limit
    }
    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.inner.lock().stats
    }

    /// The page under `key`, if cached, and its state.
    pub fn get(&self, key: &K) -> Option<(Arc<Vec<u8>>, PageState)> {
        let mut inner = self.inner.lock();
        let found = inner.entries.get_mut(key).map(|entry| {
            entry.referenced = true;
            (Arc::clone(&entry.page), entry.state)
        });
        if found.is_some() {
            inner.stats.hits += 1;
        } else {
            inner.stats.misses += 1;
        }
        found
    }

    /// Whether something is held under `key` (neither counted as a lookup nor marked used).
    pub fn holds(&self, key: &K) -> bool {
        self.inner.lock().entries.contains_key(key)
    }

    /// Keep a clean page (just read and verified). Returns whether it was kept: when every
    /// page is dirty or frozen nothing can be evicted, and the page is not cached.
    pub fn insert_clean(&self, key: K, page: Arc<Vec<u8>>) -> bool {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.entries.get_mut(&key) {
            // Another reader cached it first, or a writer changed it: keep what is there.
            entry.referenced = true;
            return true;
        }
        let pinned = self.pin.is_some_and(|pin| pin(&key));
        if !pinned && !Self::make_room(&mut inner, self.cap_pages, UNITS_PER_PAGE) {
            inner.stats.refused += 1;
            return false;
        }
        Self::add(&mut inner, key, page, PageState::Clean, pinned);
        true
    }

    /// Keep a sector (a 4 KiB part of a page in the form `meta::held` makes, whole or
    /// compact, with whatever its reader needs to tell whether it is still current appended)
    /// under `key`, replacing a sector held there; it is counted at its length and its
    /// bookkeeping's. Returns whether it was kept (as [`PageCache::insert_clean`]); a page
    /// under `key` is left alone.
    pub fn insert_sector(&self, key: K, sector: Arc<Vec<u8>>) -> bool {
        debug_assert!(sector.len() <= PAGE_BYTES);
        let mut inner = self.inner.lock();
        match inner.entries.get(&key).map(|e| e.sector) {
            Some(true) => Self::remove(&mut inner, &key),
            Some(false) => return false,
            None => {}
        }
        if !Self::make_room(&mut inner, self.cap_pages, sector_units(sector.len())) {
            inner.stats.refused += 1;
            return false;
        }
        Self::add_entry(&mut inner, key, sector, PageState::Clean, false, true);
        true
    }

    /// Make the page under `key` dirty with `page` as its content (a changed page, or a new
    /// one). A frozen page stays with its sync; this content is the writer's own copy.
    ///
    /// # Errors
    /// [`CacheFull`] when one more dirty page would pass the dirty limit, or the cap with
    /// nothing left to evict; nothing changes.
    pub fn put_dirty(&self, key: K, page: Arc<Vec<u8>>) -> Result<(), CacheFull> {
        let mut inner = self.inner.lock();
        let state = inner.entries.get(&key).map(|e| e.state);
        let pinned = inner.entries.get(&key).is_some_and(|e| e.pinned);
        if state == Some(PageState::Dirty) {
            if let Some(entry) = inner.entries.get_mut(&key) {
                entry.page = page;
                entry.referenced = true;
            }
            return Ok(());
        }
        if inner.stats.dirty >= self.dirty_limit {
            return Err(CacheFull);
        }
        match state {
            Some(PageState::Clean) => *Self::clean_counter(&mut inner.stats, pinned) -= 1,
            // The sync keeps counting its frozen bytes until it releases them.
            Some(PageState::Frozen) => {}
            Some(PageState::Dirty) => unreachable!("handled above"),
            None => {
                if !Self::make_room(&mut inner, self.cap_pages, UNITS_PER_PAGE) {
                    return Err(CacheFull);
                }
                let pinned = self.pin.is_some_and(|pin| pin(&key));
                Self::add(&mut inner, key, page, PageState::Dirty, pinned);
                return Ok(());
            }
        }
        inner.stats.dirty += 1;
        if let Some(entry) = inner.entries.get_mut(&key) {
            entry.page = page;
            entry.state = PageState::Dirty;
            entry.referenced = true;
        }
        Ok(())
    }

    /// Change dirty page `key` in place (copied first only if a sync still holds its bytes);
    /// `false`, nothing changed, when the page is not dirty.
    pub fn modify_dirty(&self, key: &K, change: impl FnOnce(&mut [u8])) -> bool {
        let mut inner = self.inner.lock();
        match inner.entries.get_mut(key) {
            Some(entry) if entry.state == PageState::Dirty && !entry.sector => {
                change(Arc::make_mut(&mut entry.page).as_mut_slice());
                entry.referenced = true;
                true
            }
            _ => false,
        }
    }

    /// The dirty pages whose key `select` picks, without changing them (what a sync would
    /// write).
    pub fn dirty_where(&self, select: impl Fn(&K) -> bool) -> Vec<(K, Arc<Vec<u8>>)> {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .filter(|(key, entry)| entry.state == PageState::Dirty && select(key))
            .map(|(key, entry)| (*key, Arc::clone(&entry.page)))
            .collect()
    }

    /// Freeze every dirty page for a sync: they become frozen and are returned (the sync writes
    /// these bytes). Writers may dirty pages again at once.
    pub fn freeze_dirty(&self) -> Vec<(K, Arc<Vec<u8>>)> {
        self.freeze_dirty_where(|_| true)
    }

    /// Freeze the dirty pages whose key `select` picks (one tree's pages).
    pub fn freeze_dirty_where(&self, select: impl Fn(&K) -> bool) -> Vec<(K, Arc<Vec<u8>>)> {
        let mut inner = self.inner.lock();
        let mut frozen = Vec::new();
        for (key, entry) in &mut inner.entries {
            if entry.state == PageState::Dirty && select(key) {
                entry.state = PageState::Frozen;
                frozen.push((*key, Arc::clone(&entry.page)));
            }
        }
        inner.stats.dirty -= frozen.len();
        inner.stats.frozen += frozen.len();
        frozen
    }

    /// The sync that froze these pages wrote them: `written` holds each page as written (the
    /// frozen bytes with its children's new pointers). Pages still frozen in the cache become
    /// clean with those bytes, and the count of frozen pages drops by all of them.
    pub fn release_frozen(&self, written: &[(K, Arc<Vec<u8>>)]) {
        let mut inner = self.inner.lock();
        for (key, page) in written {
            let mut now_clean = None;
            if let Some(entry) = inner.entries.get_mut(key) {
                if entry.state == PageState::Frozen {
                    entry.state = PageState::Clean;
                    entry.page = Arc::clone(page);
                    now_clean = Some(entry.pinned);
                }
            }
            inner.stats.frozen -= 1;
            if let Some(pinned) = now_clean {
                *Self::clean_counter(&mut inner.stats, pinned) += 1;
            }
        }
        // Frozen pages that a writer copied were held only by the sync: room may be owed.
        while inner.stats.units() > self.cap_pages * UNITS_PER_PAGE {
            if !Self::evict_one(&mut inner) {
                break;
            }
        }
    }

    /// Forget a clean page (its content is no longer what its key names). Dirty and frozen
    /// pages are not dropped this way.
    pub fn forget_clean(&self, key: &K) {
        let mut inner = self.inner.lock();
        if inner
            .entries
            .get(key)
            .is_some_and(|e| e.state == PageState::Clean)
        {
            Self::remove(&mut inner, key);
        }
    }

    /// Forget every clean page whose key `select` picks (pinned ones too): what they name
    /// changed wholesale (a tree given another root). Dirty and frozen pages stay.
    pub fn forget_clean_where(&self, select: impl Fn(&K) -> bool) {
        let mut inner = self.inner.lock();
        let keys: Vec<K> = inner
            .entries
            .iter()
            .filter(|(key, entry)| entry.state == PageState::Clean && select(key))
            .map(|(key, _)| *key)
            .collect();
        for key in &keys {
            Self::remove(&mut inner, key);
        }
    }

    fn add(inner: &mut Inner<K>, key: K, page: Arc<Vec<u8>>, state: PageState, pinned: bool) {
        Self::add_entry(inner, key, page, state, pinned, false);
    }

    fn add_entry(
        inner: &mut Inner<K>,
        key: K,
        page: Arc<Vec<u8>>,
        state: PageState,
        pinned: bool,
        sector: bool,
    ) {
        let ring_at = match inner.free_ring.pop() {
            Some(at) => {
                inner.ring[at] = Some(key);
                at
            }
            None => {
                inner.ring.push(Some(key));
                inner.ring.len() - 1
            }
        };
        match state {
            PageState::Clean if sector => {
                inner.stats.sectors += 1;
                inner.stats.sector_bytes += sector_units(page.len()) * UNIT_BYTES;
            }
            PageState::Clean => *Self::clean_counter(&mut inner.stats, pinned) += 1,
            PageState::Dirty => inner.stats.dirty += 1,
            PageState::Frozen => inner.stats.frozen += 1,
        }
        inner.entries.insert(
            key,
            Entry {
                page,
                state,
                referenced: false,
                ring_at,
                pinned,
                sector,
            },
        );
    }

    fn remove(inner: &mut Inner<K>, key: &K) {
        if let Some(entry) = inner.entries.remove(key) {
            inner.ring[entry.ring_at] = None;
            inner.free_ring.push(entry.ring_at);
            if inner.ring.len() >= TIDY_SLOTS && 2 * inner.free_ring.len() > inner.ring.len() {
                Self::tidy(inner);
            }
            match entry.state {
                PageState::Clean if entry.sector => {
                    inner.stats.sectors -= 1;
                    inner.stats.sector_bytes -= sector_units(entry.page.len()) * UNIT_BYTES;
                }
                PageState::Clean => *Self::clean_counter(&mut inner.stats, entry.pinned) -= 1,
                PageState::Dirty => inner.stats.dirty -= 1,
                // Still counted until the sync releases it.
                PageState::Frozen => {}
            }
        }
    }

    /// Give back the bookkeeping of entries gone: the ring without its empty slots (in the
    /// same order, the hand on the same entry) and the hash table shrunk. Compact sectors
    /// make up to 64 × more entries than pages fit the same cap (V4.17a); when pages replace
    /// them, their slots would otherwise stay allocated outside the cap.
    fn tidy(inner: &mut Inner<K>) {
        let Inner {
            entries,
            ring,
            free_ring,
            hand,
            ..
        } = inner;
        let mut kept = Vec::with_capacity(entries.len());
        let mut new_hand = 0;
        for (at, slot) in ring.iter().enumerate() {
            if let Some(key) = slot {
                if at < *hand {
                    new_hand += 1;
                }
                if let Some(entry) = entries.get_mut(key) {
                    entry.ring_at = kept.len();
                }
                kept.push(Some(*key));
            }
        }
        *ring = kept;
        *free_ring = Vec::new();
        *hand = new_hand;
        entries.shrink_to(entries.len() + entries.len() / 4);
    }

    /// Evict clean pages and sectors until `units` more fit the cap. False if none can be
    /// evicted.
    fn make_room(inner: &mut Inner<K>, cap_pages: usize, units: usize) -> bool {
        while inner.stats.units() + units > cap_pages * UNITS_PER_PAGE {
            if !Self::evict_one(inner) {
                return false;
            }
        }
        true
    }

    /// One turn of the CLOCK: evict the first clean page not referenced since the hand last
    /// passed it. Two full turns find one if any clean page exists.
    fn evict_one(inner: &mut Inner<K>) -> bool {
        if inner.stats.clean + inner.stats.sectors == 0 || inner.ring.is_empty() {
            return false;
        }
        for _ in 0..2 * inner.ring.len() {
            let at = inner.hand % inner.ring.len();
            inner.hand = at + 1;
            let Some(key) = inner.ring[at] else {
                continue;
            };
            let Some(entry) = inner.entries.get_mut(&key) else {
                continue;
            };
            if entry.state != PageState::Clean || entry.pinned {
                continue;
            }
            if entry.referenced {
                entry.referenced = false;
                continue;
            }
            Self::remove(inner, &key);
            inner.stats.evictions += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![fill; PAGE_BYTES])
    }

    #[test]
    fn the_bookkeeping_of_many_small_sectors_is_given_back_when_pages_replace_them() {
        // 64 pages of cap: 4,000 sparse sectors (72 bytes: 4 units each) fit at once.
        let cache = PageCache::<u64>::new(64 * PAGE_BYTES);
        for key in 0..4_000u64 {
            assert!(cache.insert_sector(key << 8, Arc::new(vec![0u8; 72])));
        }
        assert_eq!(cache.stats().sectors, 4_000);
        // Pages take their place: every sector goes, and the slots they held with them.
        for key in 0..64u64 {
            assert!(cache.insert_clean((key << 8) | 1, page(1)));
        }
        let stats = cache.stats();
        assert_eq!((stats.clean, stats.sectors), (64, 0));
        let inner = cache.inner.lock();
        assert!(
            inner.ring.len() < 1_024,
            "{} ring slots kept",
            inner.ring.len()
        );
        // The hash table keeps what the last tidy left it (it ran with at most about a
        // thousand entries left); without tidying it holds room for the 4,000 sectors.
        assert!(
            inner.entries.capacity() < 2_048,
            "{}",
            inner.entries.capacity()
        );
        // The ring still names every entry where the entry says.
        for (key, entry) in &inner.entries {
            assert_eq!(inner.ring[entry.ring_at], Some(*key));
        }
        drop(inner);
        // And the CLOCK still evicts: a 65th page pushes one out.
        assert!(cache.insert_clean((99 << 8) | 1, page(2)));
        assert_eq!(cache.stats().clean, 64);
    }

    #[test]
    fn page_keys_spread_over_the_low_bits_the_table_picks_buckets_by() {
        // Leaves of one tree level: first keys 1024 apart, as the map's are. A plain multiply
        // would leave their ten low bits zero (at most 4 of 4,096 buckets); a random function
        // fills about 63 % of them.
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<PageKeyHasher>::default();
        for (tree, level) in [(0u8, 1u8), (2, 1), (0, 2)] {
            let buckets: std::collections::HashSet<u64> = (0..4096u64)
                .map(|n| build.hash_one((tree, level, n * 1024)) & 4095)
                .collect();
            assert!(
                buckets.len() > 2400,
                "tree {tree} level {level}: {} of 4096 buckets",
                buckets.len()
            );
        }
    }

    #[test]
    fn pinned_pages_stay_outside_the_cap_through_dirty_and_sync() {
        // Keys >= 100 are "interior": pinned.
        let cache = PageCache::<u32>::new(4 * PAGE_BYTES).with_pinned(|k| *k >= 100);
        for k in 100..110 {
            assert!(cache.insert_clean(k, page(1)));
        }
        for k in 0..20 {
            cache.insert_clean(k, page(2));
        }
        let stats = cache.stats();
        assert_eq!(
            (stats.pinned, stats.clean),
            (10, 4),
            "the cap holds the others"
        );
        assert!((100..110).all(|k| cache.get(&k).is_some()), "none evicted");
        cache.put_dirty(105, page(3)).unwrap();
        assert_eq!((cache.stats().pinned, cache.stats().dirty), (9, 1));
        let frozen = cache.freeze_dirty();
        cache.release_frozen(&frozen);
        assert_eq!((cache.stats().pinned, cache.stats().frozen), (10, 0));
        cache.forget_clean(&105);
        assert_eq!(cache.stats().pinned, 9);
    }

    #[test]
    fn clean_pages_stay_under_the_cap_and_recently_used_ones_survive() {
        let cache = PageCache::<u64>::new(8 * PAGE_BYTES);
        for key in 0..8 {
            assert!(cache.insert_clean(key, page(key as u8)));
        }
        // Use page 0 and 1: the next insertions evict others first.
        assert!(cache.get(&0).is_some());
        assert!(cache.get(&1).is_some());
        for key in 8..12 {
            assert!(cache.insert_clean(key, page(1)));
        }
        let stats = cache.stats();
        assert_eq!(stats.clean, 8);
        assert_eq!(stats.evictions, 4);
        assert!(cache.get(&0).is_some() && cache.get(&1).is_some());
        assert!(stats.bytes() <= 8 * PAGE_BYTES);
    }

    #[test]
    fn dirty_pages_are_limited_and_never_evicted() {
        let cache = PageCache::<u64>::new(8 * PAGE_BYTES);
        assert_eq!(cache.dirty_limit(), 2);
        cache.put_dirty(1, page(1)).unwrap();
        cache.put_dirty(2, page(2)).unwrap();
        cache.put_dirty(2, page(3)).unwrap(); // re-dirtying costs nothing
        assert_eq!(cache.put_dirty(3, page(3)), Err(CacheFull));
        for key in 10..30 {
            cache.insert_clean(key, page(0));
        }
        assert_eq!(
            cache.get(&1).map(|(p, s)| (p[0], s)),
            Some((1, PageState::Dirty))
        );
        assert_eq!(
            cache.get(&2).map(|(p, s)| (p[0], s)),
            Some((3, PageState::Dirty))
        );
        assert!(cache.stats().bytes() <= 8 * PAGE_BYTES);
    }

    #[test]
    fn a_frozen_page_changed_by_a_writer_keeps_the_frozen_bytes_for_the_sync() {
        let cache = PageCache::<u64>::new(8 * PAGE_BYTES);
        cache.put_dirty(1, page(1)).unwrap();
        let frozen = cache.freeze_dirty();
        assert_eq!(frozen.len(), 1);
        assert_eq!(cache.stats().frozen, 1);
        // The writer's copy is dirty; the sync still holds the frozen bytes.
        cache.put_dirty(1, page(9)).unwrap();
        assert_eq!(frozen[0].1[0], 1);
        let stats = cache.stats();
        assert_eq!((stats.dirty, stats.frozen), (1, 1));
        cache.release_frozen(&frozen);
        let stats = cache.stats();
        assert_eq!((stats.clean, stats.dirty, stats.frozen), (0, 1, 0));
        assert_eq!(
            cache.get(&1).map(|(p, s)| (p[0], s)),
            Some((9, PageState::Dirty))
        );
        // An unchanged frozen page becomes clean when released.
        cache.put_dirty(2, page(2)).unwrap();
        let frozen = cache.freeze_dirty();
        assert_eq!(frozen.len(), 2);
        cache.release_frozen(&frozen);
        assert_eq!(cache.get(&2).map(|(_, s)| s), Some(PageState::Clean));
    }

    #[test]
    fn with_only_dirty_and_frozen_pages_a_clean_page_is_not_kept() {
        let cache = PageCache::<u64>::new(4 * PAGE_BYTES);
        cache.put_dirty(1, page(1)).unwrap();
        let _frozen = cache.freeze_dirty();
        cache.put_dirty(2, page(2)).unwrap();
        let _frozen2 = cache.freeze_dirty();
        cache.put_dirty(3, page(3)).unwrap();
        assert!(cache.insert_clean(4, page(4)));
        assert!(
            cache.insert_clean(5, page(5)),
            "the clean page 4 makes room"
        );
        assert!(cache.get(&4).is_none());
        let _frozen3 = cache.freeze_dirty();
        cache.put_dirty(6, page(6)).unwrap(); // evicts page 5, the last clean one
        assert!(cache.get(&5).is_none());
        assert_eq!(
            cache.put_dirty(7, page(7)),
            Err(CacheFull),
            "the dirty limit"
        );
        assert!(
            !cache.insert_clean(7, page(7)),
            "the cap is full of pages that cannot go"
        );
        assert_eq!(cache.stats().refused, 1);
        assert!(cache.stats().bytes() <= 4 * PAGE_BYTES);
    }
}
