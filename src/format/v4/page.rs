//! Metadata pages: 16 KiB, no header. A page is verified only against the pointer its parent
//! (or the uberblock) holds: the crc in that pointer is seeded with the pool, the page's own
//! address and birth, its tree, level and first key (docs/FORMAT.md, V4.3), so a page of another
//! pool, place, age, tree or level fails, and so does a lost, torn or misdirected page write.
//!
//! Pointer pages (every level of the map, and the interior levels of every tree) are 1024 block
//! pointers; the leaf records of the other trees are encoded by their own modules into pages of
//! the same size and verified the same way.

use super::pointer::{BlockPointer, Tree};

/// Bytes of every metadata page.
pub const PAGE_BYTES: usize = 16 * 1024;
/// Pointers in a pointer page (the fanout of every tree).
pub const POINTERS_PER_PAGE: usize = PAGE_BYTES / BlockPointer::BYTES;

/// Everything a page's checksum is seeded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSeed {
    /// The pool's UUID.
    pub pool: [u8; 16],
    /// Metadata page number the page was written at.
    pub mpn: u64,
    /// The sequence of the tree sync that wrote it.
    pub birth: u64,
    /// The tree it belongs to.
    pub tree: Tree,
    /// Its level (1 = leaf).
    pub level: u8,
    /// The first key it covers.
    pub first_key: u64,
}

impl PageSeed {
    /// The seed of the page `pointer` points at, in `tree`, covering keys from `first_key`.
    /// `None` for a pointer that names no page (a hole or a zero block).
    #[must_use]
    pub fn of_pointer(
        pool: [u8; 16],
        pointer: &BlockPointer,
        tree: Tree,
        first_key: u64,
    ) -> Option<Self> {
        Some(Self {
            pool,
            mpn: pointer.address()?,
            birth: pointer.birth(),
            tree,
            level: pointer.level(),
            first_key,
        })
    }

    /// The 48 seed bytes: `pool(16) ‖ mpn u64 ‖ birth u64 ‖ tree u8 ‖ level u8 ‖ zero(6) ‖
    /// first_key u64`, little-endian.
    #[must_use]
    pub fn bytes(&self) -> [u8; 48] {
        let mut seed = [0u8; 48];
        seed[..16].copy_from_slice(&self.pool);
        seed[16..24].copy_from_slice(&self.mpn.to_le_bytes());
        seed[24..32].copy_from_slice(&self.birth.to_le_bytes());
        seed[32] = self.tree.id();
        seed[33] = self.level;
        seed[40..48].copy_from_slice(&self.first_key.to_le_bytes());
        seed
    }
}

/// The checksum a parent holds for `page` written with `seed`.
#[must_use]
pub fn page_checksum(seed: &PageSeed, page: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seed.bytes()), page)
}

/// A page that does not verify against its parent's pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMismatch {
    /// The crc the parent holds.
    pub expected: u32,
    /// The crc of the bytes read (0 when the length was wrong).
    pub found: u32,
}

/// Check `page` against the pointer that names it. A hole or zero pointer names no page and
/// never verifies anything.
///
/// # Errors
/// [`PageMismatch`] when the bytes are not exactly what was written there.
pub fn verify_page(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    page: &[u8],
) -> Result<(), PageMismatch> {
    verify_with(
        pool,
        pointer,
        tree,
        first_key,
        page,
        |level| level != 0,
        page_checksum,
    )
}

/// Check `page`, 16 KiB, against `pointer` (whose level `level_ok` must accept) with
/// `checksum` computed from the seed the pointer names: what [`verify_page`] and
/// [`super::verify_leaf`] share.
pub(super) fn verify_with(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    page: &[u8],
    level_ok: fn(u8) -> bool,
    checksum: fn(&PageSeed, &[u8]) -> u32,
) -> Result<(), PageMismatch> {
    let mismatch = |found| PageMismatch {
        expected: pointer.crc(),
        found,
    };
    let Some(seed) = PageSeed::of_pointer(pool, pointer, tree, first_key) else {
        return Err(mismatch(0));
    };
    if page.len() != PAGE_BYTES || !level_ok(pointer.level()) {
        return Err(mismatch(0));
    }
    let found = checksum(&seed, page);
    if found == pointer.crc() {
        Ok(())
    } else {
        Err(mismatch(found))
    }
}

/// A page of 1024 block pointers at `level` (its entries point at `level - 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerPage {
    level: u8,
    pointers: Vec<BlockPointer>,
}

impl PointerPage {
    /// A page at `level` (>= 1) whose every entry is a hole.
    ///
    /// # Panics
    /// If `level` is 0 or above 15 (a caller bug).
    #[must_use]
    pub fn empty(level: u8) -> Self {
        assert!((1..=15).contains(&level), "page level {level}");
        Self {
            level,
            pointers: vec![BlockPointer::hole(level - 1); POINTERS_PER_PAGE],
        }
    }

    /// The page's level (1 = leaf).
    #[must_use]
    pub fn level(&self) -> u8 {
        self.level
    }
    /// Entry `index` (< 1024).
    #[must_use]
    pub fn get(&self, index: usize) -> BlockPointer {
        self.pointers[index]
    }
    /// Replace entry `index` (< 1024).
    ///
    /// # Panics
    /// If the pointer is not at `level - 1` (a caller bug: a tree never mixes levels).
    pub fn set(&mut self, index: usize, pointer: BlockPointer) {
        assert_eq!(pointer.level() + 1, self.level, "pointer level in page");
        self.pointers[index] = pointer;
    }
    /// Every entry, in key order.
    #[must_use]
    pub fn pointers(&self) -> &[BlockPointer] {
        &self.pointers
    }
    /// Whether every entry is a hole (such a page is never written: its parent holds a hole).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pointers.iter().all(BlockPointer::is_hole)
    }

    /// The 16 KiB of this page.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut page = Vec::with_capacity(PAGE_BYTES);
        for pointer in &self.pointers {
            page.extend_from_slice(&pointer.encode());
        }
        page
    }

    /// The page in `bytes` (verified by the caller against its parent), read as a page at
    /// `level`.
    ///
    /// # Errors
    /// A reason naming the entry when the length is wrong, an entry does not decode, or an entry
    /// points at another level than `level - 1`.
    pub fn decode(bytes: &[u8], level: u8) -> Result<Self, String> {
        if bytes.len() != PAGE_BYTES {
            return Err(format!("page is {} bytes, not {PAGE_BYTES}", bytes.len()));
        }
        if !(1..=15).contains(&level) {
            return Err(format!("pointer page level {level}"));
        }
        let mut pointers = Vec::with_capacity(POINTERS_PER_PAGE);
        for (index, raw) in bytes.chunks_exact(BlockPointer::BYTES).enumerate() {
            let pointer = BlockPointer::decode(raw).map_err(|e| format!("entry {index}: {e}"))?;
            if pointer.level() + 1 != level {
                return Err(format!(
                    "entry {index} points at level {} from a level-{level} page",
                    pointer.level()
                ));
            }
            pointers.push(pointer);
        }
        Ok(Self { level, pointers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: [u8; 16] = [3; 16];

    fn leaf() -> PointerPage {
        let mut page = PointerPage::empty(1);
        page.set(0, BlockPointer::written(42, 9, 0, 0x1234_5678));
        page.set(1023, BlockPointer::zeroed(0, 10));
        page
    }

    fn written_at(page: &[u8], mpn: u64, birth: u64, first_key: u64) -> BlockPointer {
        let seed = PageSeed {
            pool: POOL,
            mpn,
            birth,
            tree: Tree::Map,
            level: 1,
            first_key,
        };
        BlockPointer::written(mpn, birth, 1, page_checksum(&seed, page))
    }

    #[test]
    fn a_page_roundtrips_and_verifies_where_it_was_written() {
        let page = leaf().encode();
        assert_eq!(page.len(), PAGE_BYTES);
        assert_eq!(PointerPage::decode(&page, 1), Ok(leaf()));
        let pointer = written_at(&page, 77, 5, 1024);
        assert_eq!(verify_page(POOL, &pointer, Tree::Map, 1024, &page), Ok(()));
    }

    #[test]
    fn every_wrong_context_fails_verification() {
        let page = leaf().encode();
        let pointer = written_at(&page, 77, 5, 1024);
        // Another pool, key, tree: the page of one context read in another.
        assert!(verify_page([4; 16], &pointer, Tree::Map, 1024, &page).is_err());
        assert!(verify_page(POOL, &pointer, Tree::Map, 0, &page).is_err());
        assert!(verify_page(POOL, &pointer, Tree::SlotSummary, 1024, &page).is_err());
        // A misdirected write: the same bytes found at another mpn.
        let elsewhere = written_at(&page, 78, 5, 1024);
        let misdirected = BlockPointer::written(78, 5, 1, pointer.crc());
        assert_ne!(elsewhere.crc(), pointer.crc());
        assert!(verify_page(POOL, &misdirected, Tree::Map, 1024, &page).is_err());
        // A lost write: the parent names birth 6, the place still holds what birth 5 wrote.
        let mut newer = leaf();
        newer.set(5, BlockPointer::written(43, 11, 0, 1));
        newer.set(600, BlockPointer::written(44, 11, 0, 2));
        let newer_pointer = written_at(&newer.encode(), 77, 6, 1024);
        assert!(verify_page(POOL, &newer_pointer, Tree::Map, 1024, &page).is_err());
        // A torn write: the first sector new, the rest old.
        let mut torn = newer.encode();
        torn[4096..].copy_from_slice(&page[4096..]);
        assert_ne!(torn, newer.encode());
        assert_ne!(torn, page);
        assert!(verify_page(POOL, &newer_pointer, Tree::Map, 1024, &torn).is_err());
        // A hole names no page; a short read never verifies.
        assert!(verify_page(POOL, &BlockPointer::hole(1), Tree::Map, 1024, &page).is_err());
        assert!(verify_page(POOL, &pointer, Tree::Map, 1024, &page[..4096]).is_err());
    }

    #[test]
    fn entries_of_the_wrong_level_are_refused() {
        let page = leaf().encode();
        assert!(PointerPage::decode(&page, 2).is_err());
        assert!(PointerPage::decode(&page, 0).is_err());
        assert!(PointerPage::decode(&page[1..], 1).is_err());
        assert!(PointerPage::empty(3).is_empty());
        assert!(!leaf().is_empty());
    }
}
