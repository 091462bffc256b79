//! The paged map of a pool as one durable state (docs/FORMAT.md, V4.8 "What a tree sync does",
//! "Recovery at open"): the map tree, the page allocator and the uberblock rings.
//!
//! A sync writes the dirty pages (copies on distinct members), flushes every member, writes
//! uberblock `txg + 1` into both rings of every member, flushes again, and only then lets the
//! allocator release pages, by its rule. Open takes the newest valid uberblock of the timeline.
//!
//! Step 3 of the plan: only tree 0 (the map) is kept; the other roots stay holes. The intent log
//! (step 4), segments and the usage table (step 5) come next; until step 5 the allocator is
//! rebuilt at open by walking the tree, which is proportional to the map's pages.

use super::alloc::{MpnAllocator, ReleaseRule};
use super::cache::PageCache;
use super::ring::{read_newest, write_uberblock};
use super::store::PageStore;
use super::tree::{PageKey, RadixTree, SetError};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::{BlockPointer, Tree, Uberblock, TREES};
use crate::geometry::Geometry;
use std::ops::Range;
use std::sync::Arc;

/// How a map is kept.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Bytes of pages the cache may hold (clean, dirty and frozen).
    pub cache_bytes: usize,
    /// Depth of the map tree (keys: 1024^depth).
    pub depth: u8,
    /// The page numbers metadata may use (`None`: the whole data area).
    pub pages: Option<Range<u64>>,
    /// When freed pages may be reused (planted bugs choose an earlier one).
    pub release: ReleaseRule,
    /// Planted bug `skip_page_checksum_verification`.
    #[cfg(feature = "testing")]
    pub skip_page_verification: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 512 << 20,
            depth: 4,
            pages: None,
            release: ReleaseRule::AfterTwoSyncs,
            #[cfg(feature = "testing")]
            skip_page_verification: false,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// The txg of the uberblock it wrote.
    pub txg: u64,
    /// Pages written (each as `tolerance + 1` copies).
    pub pages_written: usize,
    /// Pages of the previous tree it stopped referencing.
    pub pages_freed: usize,
}

/// The durable, paged map of one pool.
#[derive(Debug)]
pub struct MapStore {
    pool: [u8; 16],
    timeline: u64,
    geometry: Geometry,
    map: RadixTree,
    alloc: MpnAllocator,
    txg: u64,
    next_sequence: u64,
}

fn flush_all(devices: &[Option<SharedDevice>]) -> Result<()> {
    for device in devices.iter().flatten() {
        device.flush().map_err(|e| Error::Io {
            device: device.name(),
            offset: None,
            source: e.into_io(),
        })?;
    }
    Ok(())
}

impl MapStore {
    fn store(pool: [u8; 16], geometry: &Geometry, options: &MapOptions) -> Result<PageStore> {
        let store = PageStore::new(pool, geometry.clone())?;
        #[cfg(not(feature = "testing"))]
        let _ = options;
        #[cfg(feature = "testing")]
        let store = if options.skip_page_verification {
            store.with_planted_skip_verification()
        } else {
            store
        };
        Ok(store)
    }

    fn page_range(geometry: &Geometry, options: &MapOptions) -> Range<u64> {
        options
            .pages
            .clone()
            .unwrap_or(0..geometry.metadata_pages())
    }

    fn uberblock(&self, txg: u64, s_sync: u64) -> Uberblock {
        let depths = [self.map_depth(), 1, 1, 1, 1, 1];
        let mut roots = depths.map(BlockPointer::hole);
        roots[0] = self.map.root();
        Uberblock {
            pool: self.pool,
            txg,
            s_sync,
            log_half: 0,
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            roots,
            next_sequence: s_sync + 1,
            timeline: self.timeline,
            depths,
            open_segments: [None; 4],
        }
    }

    fn map_depth(&self) -> u8 {
        self.map.root().level()
    }

    /// A new, empty map: uberblock 0 (every root a hole) in both rings of every member.
    ///
    /// # Errors
    /// A bad depth or page range, or a member that cannot be written.
    pub fn create(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
    ) -> Result<Self> {
        let cache = Arc::new(PageCache::<PageKey>::new(options.cache_bytes));
        let store = Self::store(pool, geometry, options)?;
        let range = Self::page_range(geometry, options);
        if range.is_empty() || range.end > geometry.metadata_pages() {
            return Err(Error::InvalidConfig(format!(
                "metadata pages {range:?} outside the data area's {}",
                geometry.metadata_pages()
            )));
        }
        let map = RadixTree::new(
            pool,
            Tree::Map,
            options.depth,
            BlockPointer::hole(options.depth),
            cache,
            store,
        )?;
        let this = Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            alloc: MpnAllocator::new(range, options.release),
            txg: 0,
            next_sequence: 2,
        };
        let failed = write_uberblock(devices, geometry, &this.uberblock(0, 1));
        if let Some((device, why)) = failed.first() {
            return Err(Error::corrupt_metadata(format!("member {device}: {why}")));
        }
        flush_all(devices)?;
        Ok(this)
    }

    /// Open the map from the newest valid uberblock of `timeline` on the members.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when no member holds a valid uberblock, two disagree about
    /// one txg, or a referenced page is named twice; [`Error::MetadataLost`] when the root or
    /// a page under it is lost on every copy.
    pub fn open(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
    ) -> Result<Self> {
        let Some((uberblock, _holders)) = read_newest(devices, geometry, pool, timeline)? else {
            return Err(Error::corrupt_metadata(
                "no valid uberblock of this pool on any member",
            ));
        };
        let cache = Arc::new(PageCache::<PageKey>::new(options.cache_bytes));
        let store = Self::store(pool, geometry, options)?;
        let depth = uberblock.depths[0];
        let map = RadixTree::new(pool, Tree::Map, depth, uberblock.roots[0], cache, store)?;
        let mut alloc = MpnAllocator::new(Self::page_range(geometry, options), options.release);
        for mpn in map.referenced_pages(devices)? {
            if !alloc.mark_used(mpn) {
                return Err(Error::corrupt_metadata(format!(
                    "metadata page {mpn} referenced twice or outside the metadata area"
                )));
            }
        }
        debug_assert_eq!(TREES, 6);
        Ok(Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            alloc,
            txg: uberblock.txg,
            next_sequence: uberblock.next_sequence,
        })
    }

    /// The txg of the newest durable uberblock.
    #[must_use]
    pub fn txg(&self) -> u64 {
        self.txg
    }
    /// Logical blocks the map can hold.
    #[must_use]
    pub fn keys(&self) -> u64 {
        self.map.keys()
    }
    /// Metadata pages in use or waiting for release.
    #[must_use]
    pub fn pages_in_use(&self) -> u64 {
        self.alloc.in_use()
    }

    /// The pointer of logical block `key`.
    ///
    /// # Errors
    /// See [`RadixTree::get`].
    pub fn get(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        self.map.get(devices, key)
    }

    /// Map logical block `key` to `pointer` (durable at the next sync); when the cache holds
    /// all the dirty pages it may, sync first, then set.
    ///
    /// # Errors
    /// See [`RadixTree::set`] and [`MapStore::sync`].
    pub fn set(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        pointer: BlockPointer,
    ) -> Result<()> {
        match self.map.set(devices, key, pointer) {
            Ok(()) => Ok(()),
            Err(SetError::Failed(e)) => Err(e),
            Err(SetError::NeedsSync(_)) => {
                self.sync(devices)?;
                self.map.set(devices, key, pointer).map_err(|e| match e {
                    SetError::Failed(e) => e,
                    SetError::NeedsSync(_) => Error::corrupt_metadata(
                        "the page cache is too small for one path of the map",
                    ),
                })
            }
        }
    }

    /// Make every change durable: write the dirty pages, flush, write uberblock `txg + 1` to
    /// both rings of every member, flush, then release what the older trees no longer need.
    ///
    /// # Errors
    /// When pages or the uberblock cannot be written or a member cannot be flushed. The
    /// previous uberblock then stays the newest durable one.
    pub fn sync(&mut self, devices: &[Option<SharedDevice>]) -> Result<SyncReport> {
        let birth = self.next_sequence;
        let alloc = std::cell::RefCell::new(&mut self.alloc);
        let outcome = self.map.sync(
            devices,
            birth,
            &mut || alloc.borrow_mut().alloc(),
            &mut |mpn| alloc.borrow_mut().dropped_in_sync(mpn),
        )?;
        flush_all(devices)?;
        let txg = self.txg + 1;
        let uberblock = self.uberblock(txg, birth);
        let failed = write_uberblock(devices, &self.geometry, &uberblock);
        let present = devices.iter().flatten().count();
        if failed.len() >= 2 * present {
            return Err(Error::corrupt_metadata(format!(
                "uberblock {txg} written on no member: {}",
                failed
                    .iter()
                    .map(|(d, why)| format!("member {d}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        flush_all(devices)?;
        let freed = outcome.freed.len();
        self.alloc.free_after(self.txg, outcome.freed);
        self.txg = txg;
        self.next_sequence = birth + 1;
        self.alloc.durable(txg);
        Ok(SyncReport {
            txg,
            pages_written: outcome.pages_written,
            pages_freed: freed,
        })
    }
}
