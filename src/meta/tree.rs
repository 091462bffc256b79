//! A copy-on-write radix tree of 16 KiB pointer pages (docs/FORMAT.md, V4.4): fanout 1024,
//! depth fixed at create, keys `0 .. 1024^depth`. Leaves (level 1) hold the level-0 pointers the
//! tree maps keys to; interior pages hold the pointers of the pages below, each with the crc of
//! that page seeded with where and when it was written.
//!
//! Pages live in the [`PageCache`] under `(tree, level, first key)`. A change dirties the leaf
//! and every page above it; a dirty page is never evicted, so a page that is not cached is
//! always exactly what its parent's pointer names on disk. A sync writes the dirty pages
//! bottom-up to fresh page numbers, each parent after its children so it carries their new
//! pointers, and returns the new root and the pages the old tree used that the new one does not.
//!
//! Step 3 of the plan: the sync holds the tree (`&mut self`) while it writes; writers wait for it.
//! Letting writers dirty pages while a sync writes frozen ones (V4.7) is a later step.

use super::cache::{CacheFull, PageCache, PageState};
use super::store::{CopyFault, CopyProblem, PageRef, PageStore};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::{
    page_checksum, seal_leaf, BlockPointer, LeafFormat, PageSeed, PointerPage, Tree, PAGE_BYTES,
    POINTERS_PER_PAGE, RECORDS_PER_SECTOR, SECTORS_PER_LEAF,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where a page is in a tree: tree id, level, first key.
pub type PageKey = (u8, u8, u64);

/// Fanout of an interior page (1024 pointers).
const FANOUT_BITS: u32 = 10;
/// Fanout of a leaf of block pointers (the map): 1024 records of 16 bytes.
pub const POINTER_LEAF_BITS: u32 = 10;

/// The key arithmetic of a tree whose leaves hold `2^leaf_bits` records of
/// `PAGE_BYTES >> leaf_bits` bytes (map: 1024 pointers; usage table: 2048 records of 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    leaf_bits: u32,
}

impl Shape {
    /// Keys a page at `level` covers.
    fn span(self, level: u8) -> u64 {
        1u64 << (self.leaf_bits + FANOUT_BITS * u32::from(level - 1))
    }
    /// First key of the page at `level` that covers `key`.
    fn first_of(self, level: u8, key: u64) -> u64 {
        key & !(self.span(level) - 1)
    }
    /// Index of `key`'s entry (a record in a leaf, a pointer above) in its page at `level`.
    fn index_of(self, level: u8, key: u64) -> usize {
        if level == 1 {
            (key & ((1 << self.leaf_bits) - 1)) as usize
        } else {
            ((key >> (self.leaf_bits + FANOUT_BITS * u32::from(level - 2)))
                & (POINTERS_PER_PAGE as u64 - 1)) as usize
        }
    }
    /// Bytes of one leaf record.
    fn record_bytes(self) -> usize {
        PAGE_BYTES >> self.leaf_bits
    }
}

fn entry(page: &[u8], index: usize) -> Result<BlockPointer> {
    BlockPointer::decode(&page[index * BlockPointer::BYTES..(index + 1) * BlockPointer::BYTES])
        .map_err(|e| Error::corrupt_metadata(format!("entry {index} of a verified page: {e}")))
}

fn set_entry(page: &mut [u8], index: usize, pointer: &BlockPointer) {
    page[index * BlockPointer::BYTES..(index + 1) * BlockPointer::BYTES]
        .copy_from_slice(&pointer.encode());
}

/// Pages already walked, by page number, with the pointer and position each was reached by:
/// trees that share pages (a recovery point and the live map, FORMAT.md V4.10a) are walked
/// once each, at the cost of what they do not share. A page number reached again by the same
/// pointer at the same position is the same page (a referenced page is never rewritten with
/// other bytes: copy-on-write, and healing rewrites the same bytes) and is passed over; by
/// another pointer it is two pages under one number, which only a page freed while still
/// named can cause: reported, never passed over.
#[derive(Debug, Default)]
pub struct SeenPages(HashMap<u64, ([u8; BlockPointer::BYTES], u8, u64)>);

/// What [`SeenPages::visit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    Again,
    Conflict,
}

impl SeenPages {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn visit(&mut self, mpn: u64, pointer: &BlockPointer, level: u8, first: u64) -> Visit {
        let this = (pointer.encode(), level, first);
        match self.0.get(&mpn) {
            None => {
                self.0.insert(mpn, this);
                Visit::New
            }
            Some(seen) if *seen == this => Visit::Again,
            Some(_) => Visit::Conflict,
        }
    }
}

fn two_pages(tree: Tree, mpn: u64, level: u8, first: u64) -> Error {
    Error::corrupt_metadata(format!(
        "tree {}: page {mpn} (level {level}, first key {first}) is named by a pointer other \
         than the one another tree reached it by: two pages under one number (a page freed \
         while still named)",
        tree.id()
    ))
}

/// A change refused: the cache cannot take more dirty pages before a sync, or an error.
#[derive(Debug)]
pub enum SetError {
    /// Sync, then retry (nothing changed).
    NeedsSync(CacheFull),
    /// Reading the path failed (nothing changed).
    Failed(Error),
}

impl From<Error> for SetError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// What a sync wrote and freed.
#[derive(Debug)]
pub struct SyncOutcome {
    /// The tree's new root (unchanged if nothing was dirty).
    pub root: BlockPointer,
    /// Pages written, per copy.
    pub pages_written: usize,
    /// Page numbers of the old tree no longer referenced by the new one.
    pub freed: Vec<u64>,
    /// Copies that could not be written (the caller's fault policy decides).
    pub copy_faults: Vec<CopyFault>,
}

/// One radix tree of a pool.
#[derive(Debug)]
pub struct RadixTree {
    pool: [u8; 16],
    tree: Tree,
    shape: Shape,
    depth: u8,
    root: BlockPointer,
    cache: Arc<PageCache<PageKey>>,
    store: PageStore,
    /// Walks pass over positions whose key range ends at or below this (a recovery point
    /// being deleted: what lies there is decided, FORMAT.md V4.10e); 0 for every other tree.
    decided_below: u64,
}

impl RadixTree {
    /// This tree with every walk ([`RadixTree::visit_pages`], [`RadixTree::leaves_unseen`],
    /// [`RadixTree::page_refs_unseen`], [`RadixTree::referenced_pages_unseen`]) passing over
    /// the positions that end at or below key `key`: a recovery point's tree while its
    /// delete has decided them (it no longer names what lies there).
    #[must_use]
    pub fn decided_below(mut self, key: u64) -> Self {
        self.decided_below = key;
        self
    }

    /// Whether a walk passes over the page at `(level, first)`.
    fn decided(&self, level: u8, first: u64) -> bool {
        first.saturating_add(self.shape.span(level)) <= self.decided_below
    }

    /// The page cache this tree shares.
    #[must_use]
    pub fn cache(&self) -> &Arc<PageCache<PageKey>> {
        &self.cache
    }

    /// The tree `tree` of depth `depth`, leaves of block pointers, whose durable root is
    /// `root`.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when the root is not a page at level `depth` (or a hole).
    pub fn new(
        pool: [u8; 16],
        tree: Tree,
        depth: u8,
        root: BlockPointer,
        cache: Arc<PageCache<PageKey>>,
        store: PageStore,
    ) -> Result<Self> {
        Self::with_leaves(pool, tree, POINTER_LEAF_BITS, depth, root, cache, store)
    }

    /// The tree `tree` whose leaves hold `2^leaf_bits` records of `16 KiB >> leaf_bits` bytes
    /// (the usage table: 11, records of 8 bytes).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when the root is not a page at level `depth` (or a hole).
    pub fn with_leaves(
        pool: [u8; 16],
        tree: Tree,
        leaf_bits: u32,
        depth: u8,
        root: BlockPointer,
        cache: Arc<PageCache<PageKey>>,
        store: PageStore,
    ) -> Result<Self> {
        if !(3..=12).contains(&leaf_bits) {
            return Err(Error::InvalidConfig(format!(
                "tree {}: leaves of 2^{leaf_bits} records",
                tree.id()
            )));
        }
        if !(1..=5).contains(&depth) || root.level() != depth || root.is_zero() {
            return Err(Error::corrupt_metadata(format!(
                "tree {} root at level {} for depth {depth}",
                tree.id(),
                root.level()
            )));
        }
        Ok(Self {
            decided_below: 0,
            pool,
            tree,
            shape: Shape { leaf_bits },
            depth,
            root,
            cache,
            store,
        })
    }

    /// The root as of the last sync.
    #[must_use]
    pub fn root(&self) -> BlockPointer {
        self.root
    }
    /// Keys this tree can hold.
    #[must_use]
    pub fn keys(&self) -> u64 {
        self.shape.span(self.depth)
    }

    /// The smallest depth whose tree holds `keys` keys with leaves of `2^leaf_bits` records.
    #[must_use]
    pub fn depth_for(keys: u64, leaf_bits: u32) -> u8 {
        let shape = Shape { leaf_bits };
        let mut depth = 1;
        while depth < 5 && shape.span(depth) < keys {
            depth += 1;
        }
        depth
    }

    fn key_of(&self, level: u8, key: u64) -> PageKey {
        (self.tree.id(), level, self.shape.first_of(level, key))
    }

    /// The page at `level` covering `key`, read through `pointer` (its parent's entry) when it
    /// is not cached. `None` for a page never written (a hole) that is not cached either.
    fn page(
        &self,
        devices: &[Option<SharedDevice>],
        level: u8,
        key: u64,
        pointer: &BlockPointer,
    ) -> Result<Option<(Arc<Vec<u8>>, PageState)>> {
        self.page_healing(devices, level, key, pointer, true)
    }

    /// [`RadixTree::page`], rewriting bad copies met on the way only when `heal`.
    fn page_healing(
        &self,
        devices: &[Option<SharedDevice>],
        level: u8,
        key: u64,
        pointer: &BlockPointer,
        heal: bool,
    ) -> Result<Option<(Arc<Vec<u8>>, PageState)>> {
        let cache_key = self.key_of(level, key);
        if let Some(found) = self.cache.get(&cache_key) {
            return Ok(Some(found));
        }
        if pointer.reads_zeros() {
            return Ok(None);
        }
        let looking;
        let store = if heal {
            &self.store
        } else {
            looking = self.store.clone().without_healing();
            &looking
        };
        let read = store.read_page(
            devices,
            pointer,
            self.tree,
            self.shape.first_of(level, key),
            self.shape.span(level),
        )?;
        let page = Arc::new(read.page);
        self.cache.insert_clean(cache_key, Arc::clone(&page));
        Ok(Some((page, PageState::Clean)))
    }

    /// The pointer `key` maps to (a hole if never set).
    ///
    /// # Errors
    /// [`Error::MetadataLost`] when a page on the way is lost on every copy; corrupt metadata
    /// for a key beyond the tree.
    pub fn get(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        self.expect_pointers()?;
        if self.leaf_format() == LeafFormat::Sectored {
            return self.get_by_sector(devices, key);
        }
        match self.leaf(devices, key)? {
            Some(page) => self.leaf_entry(&page, self.shape.index_of(1, key)),
            None => Ok(BlockPointer::hole(0)),
        }
    }

    /// [`RadixTree::get`] in a tree of sectored leaves (docs/FORMAT.md V4.17): a leaf the
    /// cache holds answers; otherwise the one 4 KiB sector holding `key`, from the cache when
    /// it was read through the pointer the parent holds now, else read alone from the first
    /// copy on a member in service and verified against that pointer. When that read fails or
    /// does not verify, or the reads are walking the leaf, the whole leaf is read (the path
    /// that heals and reports).
    fn get_by_sector(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        let Some(pointer) = self.parent_pointer_of_leaf(devices, key, true)? else {
            return Ok(BlockPointer::hole(0));
        };
        let index = self.shape.index_of(1, key);
        if let Some((page, _)) = self.cache.get(&self.key_of(1, key)) {
            return self.leaf_entry(&page, index);
        }
        if pointer.reads_zeros() {
            return Ok(BlockPointer::hole(0));
        }
        let sector = index / RECORDS_PER_SECTOR;
        let first = self.shape.first_of(1, key);
        let sector_key = |s: usize| (self.tree.id(), 0, first + (s * RECORDS_PER_SECTOR) as u64);
        let held = self
            .cache
            .get(&sector_key(sector))
            .filter(|(bytes, _)| self.store.sector_is_current(bytes, &pointer));
        // The first key of a sector missing right after the sector before it was read: the
        // reads are walking the leaf (a long or sequential read), so the whole leaf is read
        // once rather than sector by sector (review of V4.17, finding 7), and its sectors
        // give way to it. Random reads land on a sector's first key once in 256 and keep
        // reading sectors.
        let walking = held.is_none()
            && index.is_multiple_of(RECORDS_PER_SECTOR)
            && sector > 0
            && self.cache.holds(&sector_key(sector - 1));
        if walking {
            let found = match self.page_healing(devices, 1, key, &pointer, true)? {
                Some((page, _)) => self.leaf_entry(&page, index),
                None => Ok(BlockPointer::hole(0)),
            };
            for s in 0..SECTORS_PER_LEAF {
                self.cache.forget_clean(&sector_key(s));
            }
            return found;
        }
        let bytes = match held {
            Some((bytes, _)) => bytes,
            None => match self.store.read_sector(devices, &pointer, first, sector)? {
                Some(bytes) => {
                    let bytes = Arc::new(super::held::hold(bytes));
                    self.cache
                        .insert_sector(sector_key(sector), Arc::clone(&bytes));
                    bytes
                }
                None => {
                    return match self.page_healing(devices, 1, key, &pointer, true)? {
                        Some((page, _)) => self.leaf_entry(&page, index),
                        None => Ok(BlockPointer::hole(0)),
                    }
                }
            },
        };
        super::held::entry(&bytes, index % RECORDS_PER_SECTOR).map_err(|e| {
            Error::corrupt_metadata(format!(
                "tree {} key {key}: a verified sector: {e}",
                self.tree.id()
            ))
        })
    }

    /// How this tree's leaves of block pointers are encoded: the pool's format for the map,
    /// plain for any other tree.
    fn leaf_format(&self) -> LeafFormat {
        self.store.leaf_format_of(self.tree)
    }

    /// Entry `index` of a leaf of block pointers of this tree.
    fn leaf_entry(&self, leaf: &[u8], index: usize) -> Result<BlockPointer> {
        self.leaf_format().entry(leaf, index).map_err(|e| {
            Error::corrupt_metadata(format!(
                "tree {} leaf, a verified page: {e}",
                self.tree.id()
            ))
        })
    }

    /// Entry `index` of a page of block pointers at `level` (a leaf, or an interior page).
    fn entry_at(&self, page: &[u8], level: u8, index: usize) -> Result<BlockPointer> {
        if level == 1 {
            self.leaf_entry(page, index)
        } else {
            entry(page, index)
        }
    }

    /// Every entry of a leaf of this tree (as [`RadixTree::leaves`] returns them).
    ///
    /// # Errors
    /// A tree of records; an entry that does not decode.
    pub fn leaf_entries(&self, leaf: &[u8]) -> Result<Vec<BlockPointer>> {
        self.expect_pointers()?;
        self.leaf_format().entries(leaf).map_err(|e| {
            Error::corrupt_metadata(format!(
                "tree {} leaf, a verified page: {e}",
                self.tree.id()
            ))
        })
    }

    /// The first key at or after `from` whose pointer is not one that reads zeros, or `None`
    /// when there is none: pages never written (a hole in their parent) are skipped whole
    /// without being read, so a sparse 16 TiB map answers in a few descents. Sees what
    /// [`RadixTree::get`] sees (dirty pages in the cache included).
    ///
    /// # Errors
    /// As [`RadixTree::get`].
    pub fn next_present(&self, devices: &[Option<SharedDevice>], from: u64) -> Result<Option<u64>> {
        self.expect_pointers()?;
        let mut key = from;
        'keys: while key < self.keys() {
            let mut pointer = self.root;
            for level in (1..=self.depth).rev() {
                let Some((page, _)) = self.page_healing(devices, level, key, &pointer, true)?
                else {
                    // This page was never written: every key under it reads zeros.
                    key = self
                        .shape
                        .first_of(level, key)
                        .saturating_add(self.shape.span(level));
                    continue 'keys;
                };
                if level == 1 {
                    let first = self.shape.first_of(1, key);
                    for index in self.shape.index_of(1, key)..POINTERS_PER_PAGE {
                        if !self.leaf_entry(&page, index)?.reads_zeros() {
                            return Ok(Some(first + index as u64));
                        }
                    }
                    key = first.saturating_add(self.shape.span(1));
                    continue 'keys;
                }
                pointer = entry(&page, self.shape.index_of(level, key))?;
            }
        }
        Ok(None)
    }

    /// The record `key` holds in its leaf, or `None` when its leaf was never written (every
    /// record of it zero).
    ///
    /// # Errors
    /// As [`RadixTree::get`].
    pub fn get_record(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        let size = self.shape.record_bytes();
        let at = self.shape.index_of(1, key) * size;
        Ok(self
            .leaf(devices, key)?
            .map(|page| page[at..at + size].to_vec()))
    }

    /// [`RadixTree::get_record`] that writes nothing: bad copies of the pages on the way are
    /// left as they are (a check-only scrub reads the slot summary through it).
    ///
    /// # Errors
    /// As [`RadixTree::get`].
    pub fn get_record_without_healing(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        let size = self.shape.record_bytes();
        let at = self.shape.index_of(1, key) * size;
        Ok(self
            .leaf_healing(devices, key, false)?
            .map(|page| page[at..at + size].to_vec()))
    }

    fn expect_pointers(&self) -> Result<()> {
        if self.shape.leaf_bits == POINTER_LEAF_BITS {
            Ok(())
        } else {
            Err(Error::corrupt_metadata(format!(
                "tree {} holds records, not block pointers",
                self.tree.id()
            )))
        }
    }

    /// The 1024 pointers of the page at `level` whose first key is `first`, read through
    /// `pointer` (its parent's entry) when it is not cached: block pointers of a map leaf, or
    /// page pointers of an interior page. `None` for a page never written. For walks that
    /// compare two trees position by position (what a recovery point holds alone, FORMAT.md
    /// V4.10a).
    ///
    /// # Errors
    /// A tree of records (not pointers) at level 1; a page lost on every copy.
    pub fn pointers_at(
        &self,
        devices: &[Option<SharedDevice>],
        level: u8,
        first: u64,
        pointer: &BlockPointer,
    ) -> Result<Option<Vec<BlockPointer>>> {
        if level == 1 {
            self.expect_pointers()?;
        }
        let Some((page, _)) = self.page(devices, level, first, pointer)? else {
            return Ok(None);
        };
        (0..POINTERS_PER_PAGE)
            .map(|index| self.entry_at(&page, level, index))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Keys a page at `level` covers.
    #[must_use]
    pub fn span_of(&self, level: u8) -> u64 {
        self.shape.span(level)
    }

    /// The tree's depth (the root's level).
    #[must_use]
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The leaf covering `key`, or `None` for a leaf never written.
    fn leaf(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<Option<Arc<Vec<u8>>>> {
        self.leaf_healing(devices, key, true)
    }

    /// [`RadixTree::leaf`], rewriting bad copies met on the way only when `heal`.
    fn leaf_healing(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
        heal: bool,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(pointer) = self.parent_pointer_of_leaf(devices, key, heal)? else {
            return Ok(None);
        };
        Ok(self
            .page_healing(devices, 1, key, &pointer, heal)?
            .map(|(page, _)| page))
    }

    /// The pointer naming the leaf that covers `key` (the root for a tree of depth 1), read
    /// through the interior pages (resident once read), or `None` when a page above it was
    /// never written.
    fn parent_pointer_of_leaf(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
        heal: bool,
    ) -> Result<Option<BlockPointer>> {
        if key >= self.keys() {
            return Err(Error::corrupt_metadata(format!(
                "key {key} beyond tree {} ({} keys)",
                self.tree.id(),
                self.keys()
            )));
        }
        let mut pointer = self.root;
        for level in (2..=self.depth).rev() {
            match self.page_healing(devices, level, key, &pointer, heal)? {
                Some((page, _)) => pointer = entry(&page, self.shape.index_of(level, key))?,
                None => return Ok(None),
            }
        }
        Ok(Some(pointer))
    }

    /// Map `key` to `pointer` (level 0) in memory; durable at the next sync.
    ///
    /// # Errors
    /// [`SetError::NeedsSync`] when the cache holds as many dirty pages as it may (nothing
    /// changed); [`SetError::Failed`] when a page on the path cannot be read.
    pub fn set(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        pointer: BlockPointer,
    ) -> std::result::Result<(), SetError> {
        self.expect_pointers()?;
        if pointer.level() != 0 {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "set of key {key} to a pointer at level {} in tree {}",
                pointer.level(),
                self.tree.id()
            ))));
        }
        if self.leaf_format() == LeafFormat::Plain {
            return self.set_record(devices, key, &pointer.encode());
        }
        let index = self.shape.index_of(1, key);
        self.change_page(devices, key, 1, &mut |leaf| {
            LeafFormat::Sectored.set_entry(leaf, index, &pointer);
        })
    }

    /// Keys one leaf covers (the most one [`RadixTree::swap_run`] takes).
    #[must_use]
    pub fn leaf_keys(&self) -> u64 {
        self.shape.span(1)
    }

    /// Map the keys `first ..` (all in one leaf) to `pointers` (level 0) in memory and return
    /// what each held before: [`RadixTree::get`] then [`RadixTree::set`] for each key, with one
    /// walk of the path for the whole run (a 1 MiB write changes 256 keys of one leaf, and a
    /// walk per key per lookup was most of the leader's landing time). Durable at the next sync.
    ///
    /// # Errors
    /// As [`RadixTree::set`] (nothing changed); a run crossing a leaf is refused.
    pub fn swap_run(
        &mut self,
        devices: &[Option<SharedDevice>],
        first: u64,
        pointers: &[BlockPointer],
    ) -> std::result::Result<Vec<BlockPointer>, SetError> {
        self.expect_pointers()?;
        let count = pointers.len() as u64;
        if count == 0 {
            return Ok(Vec::new());
        }
        let last = first.saturating_add(count - 1);
        if self.shape.first_of(1, first) != self.shape.first_of(1, last) || last >= self.keys() {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "a run of {count} keys from {first} is not within one leaf of tree {}",
                self.tree.id()
            ))));
        }
        if let Some(bad) = pointers.iter().find(|p| p.level() != 0) {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "set of a key from {first} to a pointer at level {} in tree {}",
                bad.level(),
                self.tree.id()
            ))));
        }
        let start = self.shape.index_of(1, first);
        let mut olds = Vec::with_capacity(pointers.len());
        let mut bad = None;
        let format = self.leaf_format();
        let tree = self.tree.id();
        self.change_page(devices, first, 1, &mut |leaf| {
            // Every old entry decoded before any is changed: a leaf that does not decode is
            // left as it was.
            olds.clear();
            for index in start..start + pointers.len() {
                match format.entry(leaf, index) {
                    Ok(old) => olds.push(old),
                    Err(e) => {
                        bad = Some(Error::corrupt_metadata(format!(
                            "tree {tree} leaf, a verified page: {e}"
                        )));
                        return;
                    }
                }
            }
            for (index, pointer) in (start..).zip(pointers) {
                format.set_entry(leaf, index, pointer);
            }
        })?;
        match bad {
            Some(e) => Err(SetError::Failed(e)),
            None => Ok(olds),
        }
    }

    /// Store `record` (exactly one record's bytes) under `key` in memory; durable at the next
    /// sync.
    ///
    /// # Errors
    /// As [`RadixTree::set`]; a record of the wrong size is refused.
    pub fn set_record(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        record: &[u8],
    ) -> std::result::Result<(), SetError> {
        if record.len() != self.shape.record_bytes() {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "a record of {} bytes for tree {}",
                record.len(),
                self.tree.id()
            ))));
        }
        let at = self.shape.index_of(1, key) * record.len();
        self.change_page(devices, key, 1, &mut |leaf| {
            leaf[at..at + record.len()].copy_from_slice(record);
        })
    }

    /// Replace the whole leaf covering `key` (16 KiB); durable at the next sync.
    ///
    /// # Errors
    /// As [`RadixTree::set`].
    pub fn set_leaf(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        leaf: &[u8],
    ) -> std::result::Result<(), SetError> {
        if leaf.len() != PAGE_BYTES {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "a leaf of {} bytes for tree {}",
                leaf.len(),
                self.tree.id()
            ))));
        }
        self.change_page(devices, key, 1, &mut |bytes| bytes.copy_from_slice(leaf))
    }

    /// Read the path to `key`'s page at `target` (pages never written start empty), change
    /// that page with `change`, and make it and every page above it dirty.
    fn change_page(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        target: u8,
        change: &mut dyn FnMut(&mut [u8]),
    ) -> std::result::Result<(), SetError> {
        if key >= self.keys() {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "key {key} beyond tree {} ({} keys)",
                self.tree.id(),
                self.keys()
            ))));
        }
        // The path from the root down to `target`, each page as the cache holds it (no copy:
        // a 16 KiB copy per level per change was most of a write's time, README "Format
        // version 4").
        let mut path: Vec<(u8, Arc<Vec<u8>>, bool)> = Vec::with_capacity(usize::from(self.depth));
        let mut parent_entry = self.root;
        for level in (target.max(1)..=self.depth).rev() {
            let (bytes, dirty) = match self.page(devices, level, key, &parent_entry)? {
                Some((page, state)) => (page, state == PageState::Dirty),
                // A leaf of records never written is all zeros (free records); pointer pages
                // start as holes.
                None if level == 1 && self.shape.leaf_bits != POINTER_LEAF_BITS => {
                    (Arc::new(vec![0u8; PAGE_BYTES]), false)
                }
                None if level == 1 => (Arc::new(self.leaf_format().empty_leaf()), false),
                None => (Arc::new(PointerPage::empty(level).encode()), false),
            };
            if level > 1 {
                parent_entry = entry(&bytes, self.shape.index_of(level, key))?;
            }
            path.push((level, bytes, dirty));
        }
        let needed = path.iter().filter(|(_, _, dirty)| !dirty).count();
        let stats = self.cache.stats();
        if stats.dirty + needed > self.cache.dirty_limit() {
            return Err(SetError::NeedsSync(CacheFull));
        }
        for (level, page, dirty) in path {
            let cache_key = self.key_of(level, key);
            if level == target {
                if dirty {
                    // Changed in place in the cache (our reference dropped first, so the
                    // page is copied only if a sync still holds it).
                    drop(page);
                    if self.cache.modify_dirty(&cache_key, |bytes| change(bytes)) {
                        continue;
                    }
                    return Err(SetError::Failed(Error::corrupt_metadata(format!(
                        "tree {} page at level {level} for key {key} was dirty and is not",
                        self.tree.id()
                    ))));
                }
                let mut bytes = page.as_ref().clone();
                change(&mut bytes);
                self.cache
                    .put_dirty(cache_key, Arc::new(bytes))
                    .map_err(SetError::NeedsSync)?;
            } else if !dirty {
                // An ancestor becomes dirty unchanged (the sync rewrites it with its child's
                // new pointer): the same bytes, shared, not copied.
                self.cache
                    .put_dirty(cache_key, page)
                    .map_err(SetError::NeedsSync)?;
            }
        }
        Ok(())
    }

    /// Make every page of this tree whose number `mpns` picks dirty (unchanged), with its
    /// ancestors, so the next sync writes it elsewhere: how a metadata segment is emptied
    /// (the pages are found from their parents; a segment has no reverse map). Stops early
    /// when the cache takes no more dirty pages: `Ok(false)`, and the caller writes the dirty
    /// pages and calls again. `Ok(true)` when every such page is dirty.
    ///
    /// # Errors
    /// When a page on the way cannot be read.
    pub fn relocate(
        &mut self,
        devices: &[Option<SharedDevice>],
        mpns: &dyn Fn(u64) -> bool,
    ) -> Result<bool> {
        let mut found = Vec::new();
        self.walk(devices, &mut |level, first, pointer| {
            if pointer.address().is_some_and(mpns) {
                found.push((level, first));
            }
        })?;
        for (level, first) in found {
            if let Some((_, PageState::Dirty)) = self.cache.get(&self.key_of(level, first)) {
                continue;
            }
            match self.change_page(devices, first, level, &mut |_| {}) {
                Ok(()) => {}
                Err(SetError::NeedsSync(_)) => return Ok(false),
                Err(SetError::Failed(e)) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Read and verify the root page into the cache (an open refuses a tree whose root no
    /// copy verifies).
    ///
    /// # Errors
    /// [`Error::MetadataLost`] when no copy of the root verifies.
    pub fn read_root(&self, devices: &[Option<SharedDevice>]) -> Result<()> {
        self.page(devices, self.depth, 0, &self.root).map(|_| ())
    }

    /// What the next sync of this tree will write and free, computed without writing: the
    /// number of dirty pages, and the page numbers of the durable pages they replace.
    ///
    /// # Errors
    /// When a dirty page's parent is not dirty in the cache (a broken invariant).
    pub fn planned_sync(&self) -> Result<(usize, Vec<u64>)> {
        let tree_id = self.tree.id();
        let dirty = self.cache.dirty_where(|key| key.0 == tree_id);
        let mut replaced = Vec::new();
        for ((_, level, first), _) in &dirty {
            let old = if *level == self.depth {
                self.root
            } else {
                let parent = self.key_of(level + 1, *first);
                let Some((page, PageState::Dirty)) = self.cache.get(&parent) else {
                    return Err(Error::corrupt_metadata(format!(
                        "tree {tree_id}: dirty page at level {level} under a clean parent"
                    )));
                };
                entry(&page, self.shape.index_of(level + 1, *first))?
            };
            if let Some(mpn) = old.address() {
                replaced.push(mpn);
            }
        }
        Ok((dirty.len(), replaced))
    }

    /// Drop the clean leaves of this tree from the cache (the usage table keeps its records
    /// resident elsewhere and needs its leaves only while they are dirty).
    pub fn forget_clean_leaves(&self, firsts: impl IntoIterator<Item = u64>) {
        for first in firsts {
            self.cache.forget_clean(&self.key_of(1, first));
        }
    }

    /// Every leaf the tree holds, as `(first key, page)`, in key order (read at open for the
    /// usage table; a hole below the root is skipped).
    ///
    /// # Errors
    /// When a page cannot be read (lost on every copy, or corrupt).
    pub fn leaves(&self, devices: &[Option<SharedDevice>]) -> Result<Vec<(u64, Arc<Vec<u8>>)>> {
        self.leaves_unseen(devices, &mut SeenPages::new())
    }

    /// [`RadixTree::leaves`] but for the pages in `seen` (and what is below them), adding the
    /// pages it reads (a page never written has no number, and is not seen).
    ///
    /// # Errors
    /// When a page cannot be read (lost on every copy, or corrupt), or a page number of
    /// `seen` is reached by another pointer.
    pub fn leaves_unseen(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
    ) -> Result<Vec<(u64, Arc<Vec<u8>>)>> {
        let mut found = Vec::new();
        let mut stack = vec![(self.depth, 0u64, self.root)];
        while let Some((level, first, pointer)) = stack.pop() {
            if self.decided(level, first) {
                continue;
            }
            if let Some(mpn) = pointer.address() {
                match seen.visit(mpn, &pointer, level, first) {
                    Visit::New => {}
                    Visit::Again => continue,
                    Visit::Conflict => return Err(two_pages(self.tree, mpn, level, first)),
                }
            }
            let Some((page, _)) = self.page(devices, level, first, &pointer)? else {
                continue;
            };
            if level == 1 {
                found.push((first, page));
                continue;
            }
            for index in (0..POINTERS_PER_PAGE).rev() {
                let child = entry(&page, index)?;
                if !child.reads_zeros() {
                    stack.push((
                        level - 1,
                        first + index as u64 * self.shape.span(level - 1),
                        child,
                    ));
                }
            }
        }
        Ok(found)
    }

    /// Write every dirty page of this tree bottom-up to fresh page numbers from `alloc`, with
    /// birth `birth`, and make the cache hold the written pages as clean. `free` hears of each
    /// page of the old tree (its pointer and the end of its key range: the hold rule of
    /// recovery points needs its birth and position, FORMAT.md V4.10a and V4.10e) as soon
    /// as the new tree stops referencing it (a correct caller only notes it: the old tree is
    /// still the durable one). The caller flushes
    /// the members, writes the uberblock with [`SyncOutcome::root`], and releases
    /// [`SyncOutcome::freed`] by its rule.
    ///
    /// # Errors
    /// When `alloc` has no page left, or no copy of a page could be written. The tree is then
    /// unchanged in memory except that its dirty pages are frozen: the pool must not go on.
    pub fn sync(
        &mut self,
        devices: &[Option<SharedDevice>],
        birth: u64,
        alloc: &mut dyn FnMut() -> Option<u64>,
        free: &mut dyn FnMut(&BlockPointer, u64),
    ) -> Result<SyncOutcome> {
        let tree_id = self.tree.id();
        let frozen = self.cache.freeze_dirty_where(|key| key.0 == tree_id);
        let mut outcome = SyncOutcome {
            root: self.root,
            pages_written: 0,
            freed: Vec::new(),
            copy_faults: Vec::new(),
        };
        if frozen.is_empty() {
            return Ok(outcome);
        }
        // Pages by level, then key: children are written before their parents.
        let mut by_level: BTreeMap<(u8, u64), Vec<u8>> = frozen
            .iter()
            .map(|((_, level, first), page)| ((*level, *first), page.as_ref().clone()))
            .collect();
        let mut new_pointers: HashMap<(u8, u64), BlockPointer> = HashMap::new();
        let mut written: Vec<(PageKey, Arc<Vec<u8>>)> = Vec::with_capacity(frozen.len());
        let mut mpns: Vec<u64> = Vec::with_capacity(frozen.len());
        let keys: Vec<(u8, u64)> = by_level.keys().copied().collect();
        for (level, first) in keys {
            let Some(mut bytes) = by_level.remove(&(level, first)) else {
                continue;
            };
            // Children written in this sync: their new pointers, and what they replaced.
            if level > 1 {
                for index in 0..POINTERS_PER_PAGE {
                    let child_first = first + index as u64 * self.shape.span(level - 1);
                    if let Some(child) = new_pointers.get(&(level - 1, child_first)) {
                        let old = entry(&bytes, index)?;
                        if let Some(mpn) = old.address() {
                            outcome.freed.push(mpn);
                            free(&old, child_first + self.shape.span(level - 1));
                        }
                        set_entry(&mut bytes, index, child);
                    }
                }
            }
            let mpn = alloc().ok_or_else(|| {
                Error::NoFreeSlot(format!("no free metadata page for tree {tree_id}"))
            })?;
            let seed = PageSeed {
                pool: self.pool,
                mpn,
                birth,
                tree: self.tree,
                level,
                first_key: first,
            };
            let crc = if level == 1 && self.leaf_format() == LeafFormat::Sectored {
                seal_leaf(&seed, &mut bytes)
            } else {
                page_checksum(&seed, &bytes)
            };
            let pointer = BlockPointer::written(mpn, birth, level, crc);
            outcome.pages_written += 1;
            new_pointers.insert((level, first), pointer);
            mpns.push(mpn);
            written.push(((tree_id, level, first), Arc::new(bytes)));
        }
        // Every page of the sync at once: nothing needs ordering before the flush that
        // precedes the uberblock.
        let pages: Vec<(u64, &[u8])> = mpns
            .iter()
            .zip(&written)
            .map(|(mpn, (_, bytes))| (*mpn, bytes.as_slice()))
            .collect();
        let copies = self.store.geometry().metadata_copies();
        for ((mpn, _), faults) in pages.iter().zip(self.store.write_pages(devices, &pages)?) {
            if faults.len() >= copies {
                return Err(Error::corrupt_metadata(format!(
                    "tree {tree_id} page {mpn}: no copy could be written ({})",
                    faults
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            outcome.copy_faults.extend(
                faults
                    .into_iter()
                    .filter(|f| f.problem != CopyProblem::Missing),
            );
        }
        let Some(root) = new_pointers.get(&(self.depth, 0)) else {
            return Err(Error::corrupt_metadata(format!(
                "tree {tree_id}: dirty pages without a dirty root"
            )));
        };
        if let Some(mpn) = self.root.address() {
            outcome.freed.push(mpn);
            free(&self.root, self.shape.span(self.depth));
        }
        self.root = *root;
        outcome.root = *root;
        self.cache.release_frozen(&written);
        Ok(outcome)
    }

    /// Every page number the tree references (a walk: for the usage recount and tests, never
    /// at open).
    ///
    /// # Errors
    /// When a page cannot be read.
    pub fn referenced_pages(&self, devices: &[Option<SharedDevice>]) -> Result<Vec<u64>> {
        self.referenced_pages_unseen(devices, &mut SeenPages::new())
    }

    /// [`RadixTree::referenced_pages`] but for the pages in `seen` (and what is below them),
    /// adding those it finds.
    ///
    /// # Errors
    /// When a page cannot be read, or a page number of `seen` is reached by another pointer.
    pub fn referenced_pages_unseen(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
    ) -> Result<Vec<u64>> {
        let mut found = Vec::new();
        self.walk_unseen(devices, seen, &mut |_, _, pointer| {
            found.extend(pointer.address());
        })?;
        Ok(found)
    }

    /// Visit every page the durable root reaches that `seen` does not hold, as `(level, first
    /// key, pointer)` (interior pages read, leaves named by their parents).
    ///
    /// # Errors
    /// When a page cannot be read, or a page number of `seen` is reached by another pointer.
    pub fn visit_pages(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
        visit: &mut dyn FnMut(u8, u64, &BlockPointer),
    ) -> Result<()> {
        self.walk_unseen(devices, seen, visit)
    }

    /// Visit every page the durable root reaches, as `(level, first key, page number)`,
    /// reading interior pages (leaves are named by their parents, not read).
    fn walk(
        &self,
        devices: &[Option<SharedDevice>],
        visit: &mut dyn FnMut(u8, u64, &BlockPointer),
    ) -> Result<()> {
        self.walk_unseen(devices, &mut SeenPages::new(), visit)
    }

    /// [`RadixTree::walk`], passing over (and not descending into) every page `seen` holds
    /// (see [`SeenPages`]), and adding the ones it visits.
    fn walk_unseen(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
        visit: &mut dyn FnMut(u8, u64, &BlockPointer),
    ) -> Result<()> {
        let mut stack = vec![(self.depth, 0u64, self.root)];
        while let Some((level, first, pointer)) = stack.pop() {
            let Some(mpn) = pointer.address().filter(|_| !self.decided(level, first)) else {
                continue;
            };
            match seen.visit(mpn, &pointer, level, first) {
                Visit::New => {}
                Visit::Again => continue,
                Visit::Conflict => return Err(two_pages(self.tree, mpn, level, first)),
            }
            visit(level, first, &pointer);
            if level == 1 {
                continue;
            }
            let Some((page, _)) = self.page(devices, level, first, &pointer)? else {
                continue;
            };
            for index in 0..POINTERS_PER_PAGE {
                let child = entry(&page, index)?;
                if child.address().is_some() {
                    stack.push((
                        level - 1,
                        first + index as u64 * self.shape.span(level - 1),
                        child,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every page the durable root reaches, with the pointer its parent holds (scrub and
    /// rebuild verify each copy against it), and the bytes read to find them. Interior pages
    /// are read from the members, not the cache (a cached page may be newer than the durable
    /// tree), up to the first copy that verifies, and nothing is written: a walk for a
    /// check-only scrub writes no byte. An interior page no copy verifies is listed but not
    /// descended into (the caller finds it bad on every copy and reports it).
    ///
    /// # Errors
    /// When a verified interior page holds an entry that does not decode.
    pub fn page_refs(&self, devices: &[Option<SharedDevice>]) -> Result<(Vec<PageRef>, u64)> {
        self.page_refs_unseen(devices, &mut SeenPages::new())
    }

    /// [`RadixTree::page_refs`] but for the pages in `seen` (and what is below them), adding
    /// the ones it lists. A page number reached by another pointer is listed again with that
    /// pointer (at most one of the two verifies: the scrub reports the other as damage).
    ///
    /// # Errors
    /// When a verified interior page holds an entry that does not decode.
    pub fn page_refs_unseen(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
    ) -> Result<(Vec<PageRef>, u64)> {
        let mut found = Vec::new();
        let bytes_read =
            self.visit_page_refs(devices, seen, true, &mut |page, _| found.push(page))?;
        Ok((found, bytes_read))
    }

    /// [`RadixTree::page_refs_unseen`], handing each page listed to `visit` instead of
    /// keeping a list, with `false` for an interior page no copy of which verifies (what lies
    /// below it was not walked), and keeping leaves out of `seen` unless `leaves_seen` (a
    /// caller that keeps only some pages merges a leaf reached twice itself: `seen` then
    /// stays the size of the interior pages, docs/FORMAT.md V4.13 "Plans in windows").
    /// Returns the bytes read.
    ///
    /// # Errors
    /// As [`RadixTree::page_refs_unseen`].
    pub fn visit_page_refs(
        &self,
        devices: &[Option<SharedDevice>],
        seen: &mut SeenPages,
        leaves_seen: bool,
        visit: &mut dyn FnMut(PageRef, bool),
    ) -> Result<u64> {
        let mut bytes_read = 0;
        let mut stack = vec![(self.depth, 0u64, self.root)];
        while let Some((level, first, pointer)) = stack.pop() {
            let Some(mpn) = pointer.address().filter(|_| !self.decided(level, first)) else {
                continue;
            };
            if (leaves_seen || level > 1) && seen.visit(mpn, &pointer, level, first) == Visit::Again
            {
                continue;
            }
            let page = PageRef {
                tree: self.tree,
                level,
                first_key: first,
                keys: self.shape.span(level),
                pointer,
            };
            if level == 1 {
                visit(page, true);
                continue;
            }
            let read = self.store.read_copies(devices, &page, &|_| true, false)?;
            bytes_read += read.bytes_read;
            visit(page, read.page.is_some());
            let Some(bytes) = read.page else {
                continue;
            };
            for index in 0..POINTERS_PER_PAGE {
                let child = entry(&bytes, index)?;
                if child.address().is_some() {
                    stack.push((
                        level - 1,
                        first + index as u64 * self.shape.span(level - 1),
                        child,
                    ));
                }
            }
        }
        Ok(bytes_read)
    }

    /// The page store this tree reads and writes through.
    #[must_use]
    pub fn store(&self) -> &PageStore {
        &self.store
    }

    /// Give the tree another durable root (a rollback: the live map becomes a recovery
    /// point's), forgetting every page of it the cache holds, unless `keep_cache` (planted
    /// bug `rollback_keeps_live_cache`).
    ///
    /// # Errors
    /// A page of the tree is dirty (its changes would be lost), or the root is not of the
    /// tree's depth.
    pub fn reset_root(&mut self, root: BlockPointer, keep_cache: bool) -> Result<()> {
        if self.has_dirty() || root.level() != self.depth || root.is_zero() {
            return Err(Error::corrupt_metadata(format!(
                "tree {}: a new root at level {} for depth {}, or pages changed since the sync",
                self.tree.id(),
                root.level(),
                self.depth
            )));
        }
        let tree_id = self.tree.id();
        if !keep_cache {
            self.cache.forget_clean_where(|key| key.0 == tree_id);
        }
        self.root = root;
        Ok(())
    }

    /// Whether the page at `level` covering `key` is dirty in the cache (something under it
    /// changed since the last sync: a change dirties a leaf and every page above it).
    #[must_use]
    pub fn is_dirty_at(&self, level: u8, key: u64) -> bool {
        matches!(
            self.cache.get(&self.key_of(level, key)),
            Some((_, PageState::Dirty))
        )
    }

    /// Whether any page of this tree is dirty (changed since the last sync).
    #[must_use]
    pub fn has_dirty(&self) -> bool {
        let tree_id = self.tree.id();
        !self.cache.dirty_where(|key| key.0 == tree_id).is_empty()
    }

    /// Bytes of one page (for callers that size I/O).
    #[must_use]
    pub fn page_bytes() -> usize {
        PAGE_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_arithmetic() {
        let map = Shape {
            leaf_bits: POINTER_LEAF_BITS,
        };
        assert_eq!(map.span(1), 1024);
        assert_eq!(map.first_of(1, 5000), 4096);
        assert_eq!(map.first_of(2, 5000), 0);
        assert_eq!(map.index_of(1, 5000), 5000 - 4096);
        assert_eq!(map.index_of(2, 5000), 4);
        assert_eq!(map.index_of(3, 3 << 20), 3);
        assert_eq!(map.record_bytes(), 16);
        let sut = Shape { leaf_bits: 11 };
        assert_eq!(sut.span(1), 2048);
        assert_eq!(sut.span(2), 2048 * 1024);
        assert_eq!(sut.index_of(1, 5000), 5000 - 4096);
        assert_eq!(sut.index_of(2, 5000), 2);
        assert_eq!(sut.index_of(3, 3 << 21), 3);
        assert_eq!(sut.record_bytes(), 8);
        // 16 TiB of rs:4+2 in 4 MiB segments: 2^22 segments, depth 3 (FORMAT.md V4.4).
        assert_eq!(RadixTree::depth_for(1 << 22, 11), 3);
        assert_eq!(RadixTree::depth_for(1 << 18, 11), 2);
        assert_eq!(RadixTree::depth_for(1 << 32, POINTER_LEAF_BITS), 4);
        assert_eq!(RadixTree::depth_for(5, 11), 1);
    }
}
