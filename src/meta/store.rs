//! Verified page I/O over the members: one 16 KiB read per page when copy 0 is good; the other
//! copies when it is not; bad copies rewritten from the first copy that verifies.
//!
//! Rewriting a bad copy in place is safe without a commit: the bytes written are exactly what
//! the durable parent names, at the place it names (the caller guarantees, by its epoch pin, that
//! the page's segment was not reused since it read the parent).

use crate::device::{run_batch, AlignedBuf, BatchOp, SharedDevice};
use crate::error::{Error, Result};
use crate::format::v4::{
    reseal_leaf, verify_leaf, verify_page, verify_sector, BlockPointer, LeafFormat, PageMismatch,
    Tree, PAGE_BYTES, SECTORS_PER_LEAF, SECTOR_BYTES,
};
use crate::geometry::Geometry;
use crate::types::DeviceIndex;
use std::fmt;

/// What was wrong with one copy of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyProblem {
    /// Its device is not in service.
    Missing,
    /// The device failed the request.
    Io(String),
    /// The device returned bytes that do not verify against the parent's pointer.
    Mismatch {
        /// The crc the parent holds.
        expected: u32,
        /// The crc of the bytes read.
        found: u32,
    },
}

/// One bad copy: which, where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFault {
    /// Copy number (0 = the one read first).
    pub copy: usize,
    /// Its device.
    pub device: DeviceIndex,
    /// Its byte offset on the device.
    pub offset: u64,
    /// What was wrong.
    pub problem: CopyProblem,
}

impl fmt::Display for CopyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copy {} on device {} at byte offset {}: ",
            self.copy, self.device, self.offset
        )?;
        match &self.problem {
            CopyProblem::Missing => write!(f, "device not in service"),
            CopyProblem::Io(why) => write!(f, "{why}"),
            CopyProblem::Mismatch { expected, found } => {
                write!(
                    f,
                    "checksum mismatch, expected {expected:#010x}, found {found:#010x}"
                )
            }
        }
    }
}

/// A page read: its verified bytes, the copies that were bad, and which of those were rewritten.
#[derive(Debug)]
pub struct PageRead {
    /// The page, verified against the pointer it was read through.
    pub page: Vec<u8>,
    /// Every copy read or tried that was bad, in copy order.
    pub faults: Vec<CopyFault>,
    /// Bad copies rewritten with the verified bytes.
    pub healed: Vec<CopyFault>,
    /// Bad copies whose rewrite failed (with the write's error).
    pub heal_failed: Vec<CopyFault>,
}

/// A page the trees reference, as its parent names it: what scrub and rebuild verify every
/// copy of (docs/FORMAT.md V4.5: metadata is verified against its parents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// The tree it belongs to.
    pub tree: Tree,
    /// Its level (1 = leaf).
    pub level: u8,
    /// The first key it covers (part of its crc's seed).
    pub first_key: u64,
    /// Keys it covers.
    pub keys: u64,
    /// The parent's pointer to it (page number, birth, crc).
    pub pointer: BlockPointer,
}

impl PageRef {
    /// Its page number (a referenced page is never a hole).
    #[must_use]
    pub fn mpn(&self) -> Option<u64> {
        self.pointer.address()
    }
}

/// Copies of one page read and verified one by one (scrub, rebuild).
#[derive(Debug, Default)]
pub struct CopiesRead {
    /// The first copy that verified, if any.
    pub page: Option<Vec<u8>>,
    /// Copies read (or tried on an absent member), as `(copy, device, offset)`.
    pub tried: Vec<(usize, DeviceIndex, u64)>,
    /// Every tried copy that was absent, unreadable or did not verify.
    pub faults: Vec<CopyFault>,
    /// Bytes read from the members.
    pub bytes_read: u64,
}

/// Reads and writes metadata pages of one pool.
#[derive(Debug, Clone)]
pub struct PageStore {
    pool: [u8; 16],
    geometry: Geometry,
    verify: bool,
    heal: bool,
    leaves: LeafFormat,
    /// Planted bug `stale_sectors`: a cached sector is used without comparing the pointer
    /// it was read through with the parent's pointer now.
    #[cfg(feature = "testing")]
    stale_sectors: bool,
}

impl PageStore {
    /// The page store of pool `pool` with `geometry`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the geometry holds no metadata page (a chunk that is not a
    /// multiple of 16 KiB).
    pub fn new(pool: [u8; 16], geometry: Geometry) -> Result<Self> {
        if geometry.pages_per_slot() == 0 {
            return Err(Error::InvalidConfig(format!(
                "format version 4 needs a chunk size that is a multiple of 16 KiB (this pool's is {} bytes)",
                geometry.chunk_bytes
            )));
        }
        Ok(Self {
            pool,
            geometry,
            verify: true,
            heal: true,
            leaves: LeafFormat::Plain,
            #[cfg(feature = "testing")]
            stale_sectors: false,
        })
    }

    /// The same store for a pool whose map leaves are in `format` (its map parameters say;
    /// a store is made plain, the format of pools before docs/FORMAT.md V4.17).
    #[must_use]
    pub fn with_leaf_format(mut self, format: LeafFormat) -> Self {
        self.leaves = format;
        self
    }

    /// Check a page read whole against the pointer that names it: the parent's crc (for a
    /// sectored map leaf computed with its sector crcs read as zero, docs/FORMAT.md V4.17).
    /// A plain leaf read as sectored, or the other way round, never verifies.
    fn check_page(
        &self,
        pointer: &BlockPointer,
        tree: Tree,
        first_key: u64,
        page: &[u8],
    ) -> std::result::Result<(), PageMismatch> {
        if self.sectored(tree, pointer) {
            verify_leaf(self.pool, pointer, tree, first_key, page)
        } else {
            verify_page(self.pool, pointer, tree, first_key, page)
        }
    }

    /// A sectored leaf that failed [`PageStore::check_page`] but whose records verify (only
    /// its sector crcs are wrong), resealed: the bytes to serve and to heal every copy with
    /// when no copy verifies whole (docs/FORMAT.md V4.17, "Verifying a whole leaf"). `None`
    /// for any other page.
    fn resealed(
        &self,
        pointer: &BlockPointer,
        tree: Tree,
        first_key: u64,
        page: &[u8],
    ) -> Option<Vec<u8>> {
        if !self.sectored(tree, pointer) {
            return None;
        }
        // `reseal_leaf` checks the records first and changes nothing when they fail.
        let mut bytes = page.to_vec();
        reseal_leaf(self.pool, pointer, tree, first_key, &mut bytes).ok()?;
        Some(bytes)
    }

    /// Planted bug `stale_sectors` (see the field).
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn with_planted_stale_sectors(mut self) -> Self {
        self.stale_sectors = true;
        self
    }

    /// Whether `held`, a sector as [`PageStore::read_sector`] returns it or as the cache holds
    /// it (`meta::held`: whole or compact, the pointer it was read through appended), is the sector the leaf `pointer` names now: the same page
    /// number, birth and crc (a leaf rewritten by a sync has a new birth, V4.17 "The cache").
    #[must_use]
    pub fn sector_is_current(&self, held: &[u8], pointer: &BlockPointer) -> bool {
        #[cfg(feature = "testing")]
        if self.stale_sectors {
            return true;
        }
        super::held::verified_through(held, pointer)
    }

    /// How the leaves of block pointers of `tree` are encoded: the pool's format for the map
    /// (tree 0, the only tree of pointer leaves that V4.17 sectors), plain for any other.
    #[must_use]
    pub fn leaf_format_of(&self, tree: Tree) -> LeafFormat {
        if tree == Tree::Map {
            self.leaves
        } else {
            LeafFormat::Plain
        }
    }

    /// Whether the page `pointer` names in `tree` is a sectored leaf.
    fn sectored(&self, tree: Tree, pointer: &BlockPointer) -> bool {
        self.leaf_format_of(tree) == LeafFormat::Sectored && pointer.level() == 1
    }

    /// Sector `sector` of the map leaf `pointer` names (covering keys from `first_key`), read
    /// alone from the first copy on a member in service (docs/FORMAT.md V4.17), with
    /// `pointer` appended: the form a cache keeps and [`PageStore::sector_is_current`] checks
    /// (one allocation, the size it is counted at). Never writes.
    /// `None` when the leaves are not sectored, or when a copy read fails or does not verify:
    /// the caller then reads the whole page, which takes a good copy and rewrites the bad one
    /// (as any read of a page does), so a bad copy costs one whole-page read, not one extra
    /// request per later read.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when the pointer names no page or a place outside the data
    /// area.
    pub fn read_sector(
        &self,
        devices: &[Option<SharedDevice>],
        pointer: &BlockPointer,
        first_key: u64,
        sector: usize,
    ) -> Result<Option<Vec<u8>>> {
        if !self.sectored(Tree::Map, pointer) || sector >= SECTORS_PER_LEAF {
            return Ok(None);
        }
        let Some(mpn) = pointer.address() else {
            return Err(Error::corrupt_metadata(format!(
                "map key {first_key}: a hole names no leaf to read"
            )));
        };
        // Read into this thread's aligned buffer: an O_DIRECT member takes it in place (a
        // `Vec` would be bounced through a zeroed aligned copy on every miss).
        thread_local! {
            static SECTOR: std::cell::RefCell<AlignedBuf> =
                std::cell::RefCell::new(AlignedBuf::zeroed(SECTOR_BYTES));
        }
        for (device, offset) in self.copies_of(mpn)? {
            let Some(member) = devices.get(device.0).and_then(Option::as_ref) else {
                continue;
            };
            return Ok(SECTOR.with_borrow_mut(|buf| {
                let read = member.read_at(offset + (sector * SECTOR_BYTES) as u64, buf);
                let good = read.is_ok()
                    && (!self.verify
                        || verify_sector(self.pool, pointer, Tree::Map, first_key, sector, buf)
                            .is_ok());
                good.then(|| {
                    let mut bytes = Vec::with_capacity(SECTOR_BYTES + BlockPointer::BYTES);
                    bytes.extend_from_slice(buf);
                    bytes.extend_from_slice(&pointer.encode());
                    bytes
                })
            }));
        }
        Ok(None)
    }

    /// A store that never writes while reading (for a read-only open: looking never writes).
    /// Bad copies are still reported, and left as they are.
    #[must_use]
    pub fn without_healing(mut self) -> Self {
        self.heal = false;
        self
    }

    /// Planted bug `skip_page_checksum_verification`: return the first copy a device returns
    /// without checking it against its parent. For proving that the tests catch it.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn with_planted_skip_verification(mut self) -> Self {
        self.verify = false;
        self
    }

    /// The geometry pages are placed by.
    #[must_use]
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn copies_of(&self, mpn: u64) -> Result<Vec<(DeviceIndex, u64)>> {
        self.geometry.page_copies(mpn).ok_or_else(|| {
            Error::corrupt_metadata(format!(
                "metadata page {mpn} is beyond the data area ({} pages)",
                self.geometry.metadata_pages()
            ))
        })
    }

    /// Read the page `pointer` names in `tree`, covering `keys` keys from `first_key`: copy 0
    /// first, then the others until one verifies; then rewrite the bad copies with it.
    /// `devices[i]` is member `i`, `None` when it is not in service.
    ///
    /// # Errors
    /// [`Error::MetadataLost`] when no copy verifies (exactly the page's keys are lost; no older
    /// page is ever returned instead); [`Error::CorruptMetadata`] when the pointer names no page
    /// or a place outside the data area (the parent itself is wrong).
    pub fn read_page(
        &self,
        devices: &[Option<SharedDevice>],
        pointer: &BlockPointer,
        tree: Tree,
        first_key: u64,
        keys: u64,
    ) -> Result<PageRead> {
        let Some(mpn) = pointer.address() else {
            return Err(Error::corrupt_metadata(format!(
                "tree {} key {first_key}: a hole names no page to read",
                tree.id()
            )));
        };
        let copies = self.copies_of(mpn)?;
        let mut faults = Vec::new();
        let mut page = vec![0u8; PAGE_BYTES];
        let mut good = None;
        // A copy whose records verify but whose sector crcs do not: served (resealed) only
        // when no copy verifies whole.
        let mut resealed: Option<(usize, Vec<u8>)> = None;
        for (copy, (device, offset)) in copies.iter().copied().enumerate() {
            let fault = |problem| CopyFault {
                copy,
                device,
                offset,
                problem,
            };
            let Some(member) = devices.get(device.0).and_then(Option::as_ref) else {
                faults.push(fault(CopyProblem::Missing));
                continue;
            };
            if let Err(e) = member.read_at(offset, &mut page) {
                faults.push(fault(CopyProblem::Io(e.to_string())));
                continue;
            }
            if !self.verify {
                good = Some(copy);
                break;
            }
            match self.check_page(pointer, tree, first_key, &page) {
                Ok(()) => {
                    good = Some(copy);
                    break;
                }
                Err(m) => {
                    if resealed.is_none() {
                        resealed = self
                            .resealed(pointer, tree, first_key, &page)
                            .map(|bytes| (copy, bytes));
                    }
                    faults.push(fault(CopyProblem::Mismatch {
                        expected: m.expected,
                        found: m.found,
                    }));
                }
            }
        }
        if good.is_none() {
            if let Some((copy, bytes)) = resealed {
                page = bytes;
                good = Some(copy);
            }
        }
        if good.is_none() {
            return Err(Error::MetadataLost {
                tree: tree.id(),
                level: pointer.level(),
                first_key,
                keys,
                mpn,
                copies: faults
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let mut healed = Vec::new();
        let mut heal_failed = Vec::new();
        for fault in faults.iter().filter(|_| self.heal) {
            if fault.problem == CopyProblem::Missing {
                continue;
            }
            let Some(member) = devices.get(fault.device.0).and_then(Option::as_ref) else {
                continue;
            };
            match member.write_at(fault.offset, &page) {
                Ok(()) => healed.push(fault.clone()),
                Err(e) => heal_failed.push(CopyFault {
                    problem: CopyProblem::Io(format!("rewrite failed: {e}")),
                    ..fault.clone()
                }),
            }
        }
        Ok(PageRead {
            page,
            faults,
            healed,
            heal_failed,
        })
    }

    /// Read the copies of `page` that lie on members `wanted` accepts, in copy order, each
    /// verified against the parent's pointer; with `all`, every one of them (scrub), else up to
    /// the first that verifies (a rebuild's source). Never writes, never caches.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when the pointer names no page or a place outside the data
    /// area.
    pub fn read_copies(
        &self,
        devices: &[Option<SharedDevice>],
        page: &PageRef,
        wanted: &dyn Fn(DeviceIndex) -> bool,
        all: bool,
    ) -> Result<CopiesRead> {
        let Some(mpn) = page.mpn() else {
            return Err(Error::corrupt_metadata(format!(
                "tree {} key {}: a hole names no page to read",
                page.tree.id(),
                page.first_key
            )));
        };
        let mut read = CopiesRead::default();
        let mut bytes = vec![0u8; PAGE_BYTES];
        // As in `read_page`: records that verify under wrong sector crcs, resealed, for when
        // no copy verifies whole.
        let mut resealed = None;
        for (copy, (device, offset)) in self.copies_of(mpn)?.into_iter().enumerate() {
            if !wanted(device) {
                continue;
            }
            read.tried.push((copy, device, offset));
            let fault = |problem| CopyFault {
                copy,
                device,
                offset,
                problem,
            };
            let Some(member) = devices.get(device.0).and_then(Option::as_ref) else {
                read.faults.push(fault(CopyProblem::Missing));
                continue;
            };
            read.bytes_read += PAGE_BYTES as u64;
            if let Err(e) = member.read_at(offset, &mut bytes) {
                read.faults.push(fault(CopyProblem::Io(e.to_string())));
                continue;
            }
            let verified = if self.verify {
                self.check_page(&page.pointer, page.tree, page.first_key, &bytes)
            } else {
                Ok(())
            };
            match verified {
                Ok(()) => {
                    if read.page.is_none() {
                        read.page = Some(bytes.clone());
                    }
                    if !all {
                        break;
                    }
                }
                Err(m) => {
                    if resealed.is_none() {
                        resealed = self.resealed(&page.pointer, page.tree, page.first_key, &bytes);
                    }
                    read.faults.push(fault(CopyProblem::Mismatch {
                        expected: m.expected,
                        found: m.found,
                    }));
                }
            }
        }
        if read.page.is_none() {
            read.page = resealed;
        }
        Ok(read)
    }

    /// Write one copy of a page (16 KiB of verified bytes) at `(device, offset)`, a place
    /// [`PageStore::read_copies`] named: the repair of a bad copy, or a rebuild's copy onto a
    /// replacement. The problem, when the member is absent or the write fails.
    pub fn write_copy(
        &self,
        devices: &[Option<SharedDevice>],
        device: DeviceIndex,
        offset: u64,
        page: &[u8],
    ) -> std::result::Result<(), CopyProblem> {
        let Some(member) = devices.get(device.0).and_then(Option::as_ref) else {
            return Err(CopyProblem::Missing);
        };
        if page.len() != PAGE_BYTES {
            return Err(CopyProblem::Io(format!("a page of {} bytes", page.len())));
        }
        member
            .write_at(offset, page)
            .map_err(|e| CopyProblem::Io(format!("rewrite failed: {e}")))
    }

    /// Write every copy of page `mpn` (16 KiB). Returns the copies that could not be written
    /// (device not in service, or a failed write); whether that is acceptable is the caller's
    /// policy (it faults the device, or fails the sync).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] for a page of the wrong size or an `mpn` beyond the data area
    /// (a caller bug, refused before any write).
    pub fn write_page(
        &self,
        devices: &[Option<SharedDevice>],
        mpn: u64,
        page: &[u8],
    ) -> Result<Vec<CopyFault>> {
        Ok(self
            .write_pages(devices, &[(mpn, page)])?
            .pop()
            .unwrap_or_default())
    }

    /// Write every copy of each of `pages` (`(mpn, bytes)`), all requests submitted together
    /// (io_uring where the member has it): what [`PageStore::write_page`] does for one page,
    /// for a whole sync at once. The copy faults of each page, in order.
    ///
    /// # Errors
    /// As [`PageStore::write_page`], before any write.
    pub fn write_pages(
        &self,
        devices: &[Option<SharedDevice>],
        pages: &[(u64, &[u8])],
    ) -> Result<Vec<Vec<CopyFault>>> {
        let mut places = Vec::with_capacity(pages.len());
        for (mpn, page) in pages {
            if page.len() != PAGE_BYTES {
                return Err(Error::corrupt_metadata(format!(
                    "metadata page {mpn} of {} bytes",
                    page.len()
                )));
            }
            places.push(self.copies_of(*mpn)?);
        }
        let mut faults: Vec<Vec<CopyFault>> = vec![Vec::new(); pages.len()];
        let mut ops = Vec::new();
        let mut owners = Vec::new();
        for (p, ((_, page), copies)) in pages.iter().zip(&places).enumerate() {
            for (copy, (device, offset)) in copies.iter().enumerate() {
                match devices.get(device.0).and_then(Option::as_ref) {
                    None => faults[p].push(CopyFault {
                        copy,
                        device: *device,
                        offset: *offset,
                        problem: CopyProblem::Missing,
                    }),
                    Some(member) => {
                        ops.push(BatchOp::write(member.as_ref(), *offset, page));
                        owners.push((p, copy, *device));
                    }
                }
            }
        }
        run_batch(&mut ops);
        for (op, (p, copy, device)) in ops.into_iter().zip(owners) {
            if let Err(e) = op.result {
                faults[p].push(CopyFault {
                    copy,
                    device,
                    offset: op.offset,
                    problem: CopyProblem::Io(e.to_string()),
                });
            }
        }
        Ok(faults)
    }
}
