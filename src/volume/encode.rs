//! Writes encoded before the volume's lock (docs/FORMAT.md V4.6, "Large writes"): a write of
//! whole aligned blocks whose count is a multiple of K owns its rows, so its parity and the
//! plain crc32c of each shard-block are computed on the writer's own thread; the leader of a
//! write group then only places the rows and turns each plain crc into the row checksum.
//!
//! Owns: the encoded buffer's layout. Does not touch the map, the devices or the lock.

use super::place::Rows;
use super::BLOCK_BYTES;
use crate::codec::{Codec, MAX_SHARDS};
use crate::device::AlignedBuf;
use std::sync::Arc;

const BLOCK: u64 = BLOCK_BYTES as u64;

/// What a writer needs to encode rows before it holds the volume's lock (cheap to clone).
#[derive(Debug, Clone)]
pub struct RowEncoder {
    rows: Rows,
    codec: Arc<Codec>,
    /// Planted bug `encode_without_parity` (see [`crate::volume::VolumeOptions`]).
    #[cfg(feature = "testing")]
    no_parity: bool,
}

/// A write encoded into its own rows: every shard-block of them, shard by shard, and the
/// plain crc32c of each.
#[derive(Debug)]
pub struct EncodedWrite {
    offset: u64,
    rows: usize,
    width: usize,
    k: usize,
    copies: usize,
    /// Region `g` (data chunk `g < K`, then parity chunk `g − K`) of row `r` at 4 KiB block
    /// `g × rows + r`: the rows of one slot are contiguous on each device, and so in memory.
    shards: AlignedBuf,
    /// The plain crc32c of shard `s` of row `r` at `r × width + s`.
    crcs: Vec<u32>,
}

impl RowEncoder {
    pub(super) fn new(rows: Rows, codec: Arc<Codec>) -> Self {
        Self {
            rows,
            codec,
            #[cfg(feature = "testing")]
            no_parity: false,
        }
    }

    #[cfg(feature = "testing")]
    pub(super) fn with_planted_no_parity(mut self, no_parity: bool) -> Self {
        self.no_parity = no_parity;
        self
    }

    #[cfg(feature = "testing")]
    fn planted_no_parity(&self) -> bool {
        self.no_parity
    }

    #[cfg(not(feature = "testing"))]
    fn planted_no_parity(&self) -> bool {
        false
    }

    /// `data` written at `offset`, encoded into rows of its own; `None` when it cannot own
    /// its rows (not whole aligned blocks, or not a multiple of K of them): such a write is
    /// packed with others under the lock.
    #[must_use]
    pub fn encode(&self, offset: u64, data: &[u8]) -> Option<EncodedWrite> {
        let k = self.rows.k();
        let width = self.rows.geometry().width();
        let blocks = data.len() / BLOCK_BYTES;
        if !offset.is_multiple_of(BLOCK)
            || !data.len().is_multiple_of(BLOCK_BYTES)
            || blocks == 0
            || !blocks.is_multiple_of(k)
        {
            return None;
        }
        let rows = blocks / k;
        let m = self.codec.parity_chunks();
        let copies = (width - m) / k;
        // One region per data chunk (its copies write the same bytes from it) and one per
        // parity chunk, each its rows in order, in a buffer kept from an earlier write when
        // there is one.
        let regions = k + m;
        let data_bytes = k * rows * BLOCK_BYTES;
        let mut crcs = vec![0u32; rows * width];
        let mut shards = shard_buffer(regions * rows * BLOCK_BYTES, data_bytes);
        let (data_regions, parity_regions) = shards.split_at_mut(data_bytes);
        for (i, region) in data_regions.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            let (j, r) = (i / rows, i % rows);
            let at = (r * k + j) * BLOCK_BYTES;
            region.copy_from_slice(&data[at..at + BLOCK_BYTES]);
        }
        for (i, block) in data_regions.chunks_exact(BLOCK_BYTES).enumerate() {
            let (j, r) = (i / rows, i % rows);
            let crc = crc32c::crc32c(block);
            for s in self.rows.shards_of(j) {
                crcs[r * width + s] = crc;
            }
        }
        if m > 0 {
            let mut parity_places: Vec<&mut [u8]> =
                parity_regions.chunks_exact_mut(BLOCK_BYTES).collect();
            for r in 0..rows {
                let mut inputs: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
                for (j, input) in inputs.iter_mut().enumerate().take(k) {
                    let at = (r * k + j) * BLOCK_BYTES;
                    *input = &data[at..at + BLOCK_BYTES];
                }
                let mut outputs: [&mut [u8]; MAX_SHARDS] = std::array::from_fn(|_| &mut [][..]);
                for (p, output) in outputs.iter_mut().enumerate().take(m) {
                    *output = std::mem::take(&mut parity_places[p * rows + r]);
                }
                if !self.planted_no_parity() {
                    self.codec
                        .encode_parity_sep(&inputs[..k], &mut outputs[..m]);
                }
                for (p, output) in outputs.iter().enumerate().take(m) {
                    crcs[r * width + k * copies + p] = crc32c::crc32c(output);
                }
            }
        }
        Some(EncodedWrite {
            offset,
            rows,
            width,
            k,
            copies,
            shards,
            crcs,
        })
    }
}

/// Most shard buffers kept for the next encoded writes, and most bytes: the pipeline keeps a
/// few MiB of encoded writes on the devices, each of which gives its buffer back when dropped
/// (by whichever thread landed it).
const SHARD_BUFFERS_KEPT: usize = 64;
const SHARD_BUFFER_BYTES_KEPT: usize = 32 << 20;

/// Shard buffers of encoded writes that landed, for the next ones: encoding in steady state
/// allocates none (tests/hot_path_alloc.rs).
static SHARD_BUFFERS: parking_lot::Mutex<Vec<AlignedBuf>> = parking_lot::const_mutex(Vec::new());

/// `len` bytes for an encoded write's shards, the first `data_bytes` of them to be
/// overwritten by the caller (a kept buffer's are not cleared first) and the rest, the
/// parity regions, zero, as the encoder is given them in a fresh buffer.
fn shard_buffer(len: usize, data_bytes: usize) -> AlignedBuf {
    let kept = AlignedBuf::take_fitting(&mut SHARD_BUFFERS.lock(), len);
    if let Some(mut buf) = kept {
        buf[data_bytes..].fill(0);
        return buf;
    }
    AlignedBuf::for_io(len)
}

impl Drop for EncodedWrite {
    fn drop(&mut self) {
        let buf = std::mem::replace(&mut self.shards, AlignedBuf::empty());
        let mut kept = SHARD_BUFFERS.lock();
        let bytes: usize = kept.iter().map(AlignedBuf::capacity).sum();
        if kept.len() < SHARD_BUFFERS_KEPT && bytes + buf.capacity() <= SHARD_BUFFER_BYTES_KEPT {
            kept.push(buf);
        }
    }
}

impl EncodedWrite {
    /// Byte offset in the volume.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of data it writes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows * self.k * BLOCK_BYTES
    }

    /// Whether it writes nothing (never: an encoded write has at least one row).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Rows it fills.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// The logical block its first row's first block is.
    pub(super) fn first_key(&self) -> u64 {
        self.offset / BLOCK
    }

    /// The block of the shard buffer shard `shard` of row `row` is written from: row `row`
    /// of the region of its data chunk (every copy of a chunk shares it) or of its parity
    /// chunk.
    pub(super) fn position(&self, row: usize, shard: usize) -> usize {
        let data_shards = self.k * self.copies;
        let region = if shard < data_shards {
            shard / self.copies
        } else {
            self.k + (shard - data_shards)
        };
        region * self.rows + row
    }

    /// `count` shard-blocks from position `at`, as one slice.
    pub(super) fn span(&self, at: usize, count: usize) -> &[u8] {
        &self.shards[at * BLOCK_BYTES..(at + count) * BLOCK_BYTES]
    }

    /// The plain crc32c of shard `shard` of row `row`.
    pub(super) fn block_crc(&self, row: usize, shard: usize) -> u32 {
        self.crcs[row * self.width + shard]
    }

    /// Its data blocks in order (logical block `first_key() + i` is the `i`-th).
    pub(super) fn data_blocks(&self) -> Vec<&[u8]> {
        (0..self.rows * self.k)
            .map(|b| {
                let (r, j) = (b / self.k, b % self.k);
                self.span(self.position(r, j * self.copies), 1)
            })
            .collect()
    }
}
