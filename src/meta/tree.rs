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
use super::store::{CopyFault, CopyProblem, PageStore};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::{
    page_checksum, BlockPointer, PageSeed, PointerPage, Tree, PAGE_BYTES, POINTERS_PER_PAGE,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where a page is in a tree: tree id, level, first key.
pub type PageKey = (u8, u8, u64);

const FANOUT_BITS: u32 = 10;

/// Keys a page at `level` covers.
fn span(level: u8) -> u64 {
    1u64 << (FANOUT_BITS * u32::from(level))
}
/// First key of the page at `level` that covers `key`.
fn first_of(level: u8, key: u64) -> u64 {
    key & !(span(level) - 1)
}
/// Index of `key`'s entry in its page at `level`.
fn index_of(level: u8, key: u64) -> usize {
    ((key >> (FANOUT_BITS * u32::from(level - 1))) & (POINTERS_PER_PAGE as u64 - 1)) as usize
}

fn entry(page: &[u8], index: usize) -> Result<BlockPointer> {
    BlockPointer::decode(&page[index * BlockPointer::BYTES..(index + 1) * BlockPointer::BYTES])
        .map_err(|e| Error::corrupt_metadata(format!("entry {index} of a verified page: {e}")))
}

fn set_entry(page: &mut [u8], index: usize, pointer: &BlockPointer) {
    page[index * BlockPointer::BYTES..(index + 1) * BlockPointer::BYTES]
        .copy_from_slice(&pointer.encode());
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
    depth: u8,
    root: BlockPointer,
    cache: Arc<PageCache<PageKey>>,
    store: PageStore,
}

impl RadixTree {
    /// The tree `tree` of depth `depth` whose durable root is `root`.
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
        if !(1..=4).contains(&depth) || root.level() != depth || root.is_zero() {
            return Err(Error::corrupt_metadata(format!(
                "tree {} root at level {} for depth {depth}",
                tree.id(),
                root.level()
            )));
        }
        Ok(Self {
            pool,
            tree,
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
        span(self.depth)
    }

    fn key_of(&self, level: u8, key: u64) -> PageKey {
        (self.tree.id(), level, first_of(level, key))
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
        let cache_key = self.key_of(level, key);
        if let Some(found) = self.cache.get(&cache_key) {
            return Ok(Some(found));
        }
        if pointer.reads_zeros() {
            return Ok(None);
        }
        let read = self.store.read_page(
            devices,
            pointer,
            self.tree,
            first_of(level, key),
            span(level),
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
        if key >= self.keys() {
            return Err(Error::corrupt_metadata(format!(
                "key {key} beyond tree {} ({} keys)",
                self.tree.id(),
                self.keys()
            )));
        }
        let mut pointer = self.root;
        for level in (1..=self.depth).rev() {
            match self.page(devices, level, key, &pointer)? {
                Some((page, _)) => pointer = entry(&page, index_of(level, key))?,
                None => return Ok(BlockPointer::hole(0)),
            }
        }
        Ok(pointer)
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
        if key >= self.keys() || pointer.level() != 0 {
            return Err(SetError::Failed(Error::corrupt_metadata(format!(
                "set of key {key} (level {}) beyond tree {}",
                pointer.level(),
                self.tree.id()
            ))));
        }
        // Read the path top-down; pages never written start empty.
        let mut path: Vec<(u8, Vec<u8>, bool)> = Vec::with_capacity(usize::from(self.depth));
        let mut parent_entry = self.root;
        for level in (1..=self.depth).rev() {
            let (bytes, dirty) = match self.page(devices, level, key, &parent_entry)? {
                Some((page, state)) => (page.as_ref().clone(), state == PageState::Dirty),
                None => (PointerPage::empty(level).encode(), false),
            };
            parent_entry = entry(&bytes, index_of(level, key))?;
            path.push((level, bytes, dirty));
        }
        let needed = path.iter().filter(|(_, _, dirty)| !dirty).count();
        let stats = self.cache.stats();
        if stats.dirty + needed > self.cache.dirty_limit() {
            return Err(SetError::NeedsSync(CacheFull));
        }
        for (level, mut bytes, dirty) in path {
            if level == 1 {
                set_entry(&mut bytes, index_of(1, key), &pointer);
            } else if dirty {
                continue;
            }
            self.cache
                .put_dirty(self.key_of(level, key), Arc::new(bytes))
                .map_err(SetError::NeedsSync)?;
        }
        Ok(())
    }

    /// Write every dirty page of this tree bottom-up to fresh page numbers from `alloc`, with
    /// birth `birth`, and make the cache hold the written pages as clean. `free` hears of each
    /// page of the old tree as soon as the new tree stops referencing it (a correct caller
    /// only notes it: the old tree is still the durable one). The caller flushes
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
        free: &mut dyn FnMut(u64),
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
        let keys: Vec<(u8, u64)> = by_level.keys().copied().collect();
        for (level, first) in keys {
            let Some(mut bytes) = by_level.remove(&(level, first)) else {
                continue;
            };
            // Children written in this sync: their new pointers, and what they replaced.
            if level > 1 {
                for index in 0..POINTERS_PER_PAGE {
                    let child_first = first + index as u64 * span(level - 1);
                    if let Some(child) = new_pointers.get(&(level - 1, child_first)) {
                        let old = entry(&bytes, index)?;
                        if let Some(mpn) = old.address() {
                            outcome.freed.push(mpn);
                            free(mpn);
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
            let pointer = BlockPointer::written(mpn, birth, level, page_checksum(&seed, &bytes));
            let faults = self.store.write_page(devices, mpn, &bytes)?;
            let copies = self.store.geometry().metadata_copies();
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
            outcome.pages_written += 1;
            new_pointers.insert((level, first), pointer);
            written.push(((tree_id, level, first), Arc::new(bytes)));
        }
        let Some(root) = new_pointers.get(&(self.depth, 0)) else {
            return Err(Error::corrupt_metadata(format!(
                "tree {tree_id}: dirty pages without a dirty root"
            )));
        };
        if let Some(mpn) = self.root.address() {
            outcome.freed.push(mpn);
            free(mpn);
        }
        self.root = *root;
        outcome.root = *root;
        self.cache.release_frozen(&written);
        Ok(outcome)
    }

    /// Every page number the tree references, for rebuilding the allocator at open (step 3:
    /// the persisted segment usage table replaces this walk in step 5).
    ///
    /// # Errors
    /// When a page cannot be read.
    pub fn referenced_pages(&self, devices: &[Option<SharedDevice>]) -> Result<Vec<u64>> {
        let mut found = Vec::new();
        let mut stack = vec![(self.depth, 0u64, self.root)];
        while let Some((level, first, pointer)) = stack.pop() {
            let Some(mpn) = pointer.address() else {
                continue;
            };
            found.push(mpn);
            if level == 1 {
                continue;
            }
            let Some((page, _)) = self.page(devices, level, first, &pointer)? else {
                continue;
            };
            for index in 0..POINTERS_PER_PAGE {
                let child = entry(&page, index)?;
                if child.address().is_some() {
                    stack.push((level - 1, first + index as u64 * span(level - 1), child));
                }
            }
        }
        Ok(found)
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
        assert_eq!(span(1), 1024);
        assert_eq!(first_of(1, 5000), 4096);
        assert_eq!(first_of(2, 5000), 0);
        assert_eq!(index_of(1, 5000), 5000 - 4096);
        assert_eq!(index_of(2, 5000), 4);
        assert_eq!(index_of(3, 3 << 20), 3);
    }
}
