//! Redundancy math over in-memory buffers: replication, Reed-Solomon, and the block checksums.
//! The codec never touches a device and never decides which shards to fetch.

mod checksum;
mod erasure;

pub use checksum::{block_checksum, ShardSums, SumMismatch};
pub use erasure::{CodecError, ErasureCoder, RseCoder, RssCoder, MAX_SHARDS};

use crate::error::{Error, Result};
use crate::geometry::Layout;

/// Encoder/decoder for one pool's layout.
#[derive(Debug)]
pub enum Codec {
    /// `copies` copies of each of `data_chunks` chunks; shard `j` carries chunk `j / copies`.
    Replicated {
        /// Copies of each chunk.
        copies: usize,
        /// Data chunks per stripe.
        data_chunks: usize,
    },
    /// Reed-Solomon; shards `0..k` are data, `k..k+m` parity.
    ReedSolomon(Box<dyn ErasureCoder>),
}

impl Codec {
    /// Build the codec for `layout` on `devices` data devices.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] if the Reed-Solomon parameters are rejected by the library.
    pub fn new(layout: Layout, devices: usize) -> Result<Self> {
        Ok(match layout {
            Layout::Mirror { copies } | Layout::Raid10 { copies } => Codec::Replicated {
                copies,
                data_chunks: layout.data_chunks(devices),
            },
            Layout::ReedSolomon { data, parity } => {
                Codec::ReedSolomon(Box::new(RseCoder::new(data, parity).map_err(|err| {
                    Error::InvalidLayout {
                        input: layout.to_string(),
                        reason: err.to_string(),
                    }
                })?))
            }
        })
    }

    /// Compute the parity shards of one stripe whose data chunks are `data` (concatenated,
    /// each `chunk_bytes` long). Replicated layouts have no parity and return an empty vector.
    #[must_use]
    pub fn encode_parity(&self, data: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
        let mut parity = vec![0u8; self.parity_chunks() * chunk_bytes];
        self.encode_parity_into(data, chunk_bytes, &mut parity);
        parity.chunks(chunk_bytes).map(<[u8]>::to_vec).collect()
    }

    /// Parity chunks per stripe (0 for replicated layouts).
    #[must_use]
    pub fn parity_chunks(&self) -> usize {
        match self {
            Codec::Replicated { .. } => 0,
            Codec::ReedSolomon(rs) => rs.parity_shards(),
        }
    }

    /// Compute the parity of one stripe into `parity` (`parity_chunks() * chunk_bytes` bytes,
    /// chunk after chunk) without allocating.
    ///
    /// # Panics
    /// If `data` or `parity` do not have the stripe's shape (a programming error).
    pub fn encode_parity_into(&self, data: &[u8], chunk_bytes: usize, parity: &mut [u8]) {
        let Codec::ReedSolomon(rs) = self else {
            return;
        };
        let (k, m) = (rs.data_shards(), rs.parity_shards());
        assert_eq!(data.len(), k * chunk_bytes, "stripe data size");
        assert_eq!(parity.len(), m * chunk_bytes, "stripe parity size");
        let mut inputs: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        for (input, chunk) in inputs.iter_mut().zip(data.chunks(chunk_bytes)) {
            *input = chunk;
        }
        let mut outputs: [&mut [u8]; MAX_SHARDS] = std::array::from_fn(|_| &mut [][..]);
        for (output, chunk) in outputs.iter_mut().zip(parity.chunks_mut(chunk_bytes)) {
            *output = chunk;
        }
        self.encode_parity_sep(&inputs[..k], &mut outputs[..m]);
    }

    /// Compute the parity of one stripe whose data chunks are the separate buffers `data`
    /// (K of them, one length) into the separate buffers `parity` (M of them, that length),
    /// without copying the chunks together first. Replicated layouts have no parity.
    ///
    /// # Panics
    /// If the counts or lengths do not match the stripe (a programming error).
    pub fn encode_parity_sep(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) {
        let Codec::ReedSolomon(rs) = self else {
            return;
        };
        assert_eq!(data.len(), rs.data_shards(), "data chunks of a stripe");
        assert_eq!(
            parity.len(),
            rs.parity_shards(),
            "parity chunks of a stripe"
        );
        // Cannot fail: shard counts were checked just above, lengths are checked by the coder.
        let encoded = rs.encode(data, parity);
        assert!(encoded.is_ok(), "encode with checked shapes: {encoded:?}");
    }

    /// Rebuild every shard whose `present` flag is false from the present ones, in place.
    /// Returns `false` (and leaves buffers unspecified) when too few shards are present.
    #[must_use]
    pub fn reconstruct(&self, shards: &mut [Vec<u8>], present: &mut [bool]) -> bool {
        assert_eq!(shards.len(), present.len(), "one flag per shard");
        match self {
            Codec::Replicated { copies, .. } => {
                for missing in 0..shards.len() {
                    if present[missing] {
                        continue;
                    }
                    let group = missing / copies;
                    let Some(source) = (group * copies..(group + 1) * copies).find(|j| present[*j])
                    else {
                        return false;
                    };
                    let bytes = shards[source].clone();
                    shards[missing].copy_from_slice(&bytes);
                    present[missing] = true;
                }
                true
            }
            Codec::ReedSolomon(rs) => {
                if shards.len() > MAX_SHARDS {
                    return false;
                }
                let mut views: [&mut [u8]; MAX_SHARDS] = std::array::from_fn(|_| &mut [][..]);
                for (view, shard) in views.iter_mut().zip(shards.iter_mut()) {
                    *view = shard.as_mut_slice();
                }
                if rs
                    .reconstruct(&mut views[..present.len()], present)
                    .is_err()
                {
                    return false;
                }
                present.iter_mut().for_each(|p| *p = true);
                true
            }
        }
    }

    /// Rebuild shard `wanted` of `shards` (views, one per shard of the stripe; `present[wanted]`
    /// false) in place, reading only the present shards: the caller lends a buffer for the
    /// wanted shard and scratch for the other absent ones (left unspecified), and no shard is
    /// copied. Returns `false` (buffers unspecified) when too few shards are present.
    #[must_use]
    pub fn reconstruct_views(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
        wanted: usize,
    ) -> bool {
        assert_eq!(shards.len(), present.len(), "one flag per shard");
        if wanted >= shards.len() || present[wanted] {
            return false;
        }
        let len = shards[wanted].len();
        if shards.iter().any(|s| s.len() != len) {
            return false;
        }
        match self {
            Codec::Replicated { copies, .. } => {
                let group = wanted / copies;
                let Some(source) = (group * copies..(group + 1) * copies).find(|j| present[*j])
                else {
                    return false;
                };
                let (from, to) = if source < wanted {
                    let (low, high) = shards.split_at_mut(wanted);
                    (&*low[source], &mut *high[0])
                } else {
                    let (low, high) = shards.split_at_mut(source);
                    (&*high[0], &mut *low[wanted])
                };
                to.copy_from_slice(from);
                true
            }
            // A data shard wanted: the absent parity shards need not be computed.
            Codec::ReedSolomon(rs) if wanted < rs.data_shards() => {
                rs.reconstruct_data(shards, present).is_ok()
            }
            Codec::ReedSolomon(rs) => rs.reconstruct(shards, present).is_ok(),
        }
    }

    /// Whether a stripe's shards agree: every copy equals its chunk's first copy, or the
    /// parity is what the data encodes to. Scrub uses it to catch shards that each match their
    /// checksum but were computed wrongly when written.
    #[must_use]
    pub fn consistent(&self, shards: &[&[u8]]) -> bool {
        match self {
            Codec::Replicated { copies, .. } => shards
                .chunks(*copies)
                .all(|group| group.iter().all(|copy| *copy == group[0])),
            Codec::ReedSolomon(rs) => rs.verify(shards).unwrap_or(false),
        }
    }

    /// How many good shards a stripe needs at the least (for error messages).
    #[must_use]
    pub fn shards_needed(&self) -> usize {
        match self {
            Codec::Replicated { data_chunks, .. } => *data_chunks,
            Codec::ReedSolomon(rs) => rs.data_shards(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Reference GF(2^8) arithmetic (polynomial 0x11d) to check the library's parity is linear
    /// over the field as we expect: parity(a ^ b) == parity(a) ^ parity(b).
    #[test]
    fn reed_solomon_parity_is_linear_and_reconstructs_any_m_losses() {
        let codec = Codec::new("rs:4+2".parse().unwrap(), 6).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let chunk = 4096;
        let a: Vec<u8> = (0..4 * chunk).map(|_| rng.gen()).collect();
        let b: Vec<u8> = (0..4 * chunk).map(|_| rng.gen()).collect();
        let ab: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        let (pa, pb, pab) = (
            codec.encode_parity(&a, chunk),
            codec.encode_parity(&b, chunk),
            codec.encode_parity(&ab, chunk),
        );
        for i in 0..2 {
            let xor: Vec<u8> = pa[i].iter().zip(&pb[i]).map(|(x, y)| x ^ y).collect();
            assert_eq!(xor, pab[i]);
        }
        // Every pair of losses is recoverable; three are not.
        let full: Vec<Vec<u8>> = a
            .chunks(chunk)
            .map(<[u8]>::to_vec)
            .chain(pa.clone())
            .collect();
        for lost1 in 0..6 {
            for lost2 in lost1..6 {
                let mut shards = full.clone();
                let mut present = vec![true; 6];
                for lost in [lost1, lost2] {
                    present[lost] = false;
                    shards[lost].fill(0xEE);
                }
                assert!(codec.reconstruct(&mut shards, &mut present));
                assert_eq!(shards, full);
            }
        }
        let mut present = vec![true, false, false, false, true, true];
        let mut shards = full.clone();
        assert!(!codec.reconstruct(&mut shards, &mut present));
    }

    #[test]
    fn replicated_reconstructs_from_any_copy() {
        let codec = Codec::new("raid10:2".parse().unwrap(), 4).unwrap();
        let mut shards = vec![vec![1u8; 8], vec![0u8; 8], vec![0u8; 8], vec![2u8; 8]];
        let mut present = vec![true, false, false, true];
        assert!(codec.reconstruct(&mut shards, &mut present));
        assert_eq!(shards[1], vec![1u8; 8]);
        assert_eq!(shards[2], vec![2u8; 8]);
        let mut present = vec![false, false, true, true];
        assert!(!codec.reconstruct(&mut shards, &mut present));
    }

    /// Rebuilding one wanted shard from borrowed views gives the encoded original for every
    /// pattern of up to `m` absent shards (the wanted one among them), data or parity wanted,
    /// and leaves every present view as it was; too few present fails.
    #[test]
    fn one_wanted_shard_is_rebuilt_from_views_for_every_loss_pattern() {
        let codec = Codec::new("rs:4+2".parse().unwrap(), 6).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let chunk = 4096;
        let data: Vec<u8> = (0..4 * chunk).map(|_| rng.gen()).collect();
        let full: Vec<Vec<u8>> = data
            .chunks(chunk)
            .map(<[u8]>::to_vec)
            .chain(codec.encode_parity(&data, chunk))
            .collect();
        for wanted in 0..6 {
            for other in 0..6 {
                let mut shards = full.clone();
                let mut present = vec![true; 6];
                for lost in [wanted, other] {
                    present[lost] = false;
                    shards[lost].fill(0xEE);
                }
                let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
                assert!(codec.reconstruct_views(&mut views, &present, wanted));
                assert_eq!(
                    shards[wanted], full[wanted],
                    "wanted {wanted}, other {other}"
                );
                for s in (0..6).filter(|s| present[*s]) {
                    assert_eq!(shards[s], full[s], "present shard {s} changed");
                }
            }
        }
        let present = [false, false, true, false, true, true];
        let mut shards = full.clone();
        let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(!codec.reconstruct_views(&mut views, &present, 0));
        // A present shard is not "wanted".
        let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(!codec.reconstruct_views(&mut views, &[true; 6], 2));

        let copies = Codec::new("raid10:2".parse().unwrap(), 4).unwrap();
        let mut shards = [vec![1u8; 8], vec![0u8; 8], vec![0u8; 8], vec![2u8; 8]];
        let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(copies.reconstruct_views(&mut views, &[true, false, false, true], 2));
        assert_eq!(shards[2], vec![2u8; 8]);
        let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(!copies.reconstruct_views(&mut views, &[false, false, true, true], 1));
        // Shards of unequal lengths are refused, not copied short (or panicked on).
        let mut shards = [vec![1u8; 8], vec![0u8; 4], vec![0u8; 8], vec![2u8; 8]];
        let mut views: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(!copies.reconstruct_views(&mut views, &[true, false, true, true], 1));
    }
}
