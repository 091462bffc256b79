//! Erasure coding behind a small trait, so the library can be chosen by measurement.
//!
//! Two implementations:
//! * [`RseCoder`] over `reed-solomon-erasure` (GF(2^8), its C SIMD kernels). It keeps the
//!   inverted decode matrix per erasure pattern in an LRU of 254 entries inside the library, so a
//!   degraded read pays the matrix inversion once per pattern, not per call
//!   (`benches/codec.rs` shows the reconstruct rate of a repeated pattern matching encode's).
//! * [`RssCoder`] over `reed-solomon-simd` (GF(2^16), FFT based). Its encoder and decoder carry
//!   scratch state, so they sit behind a mutex and are reset per call; decode evaluates over the
//!   whole field and costs a large fixed amount per call for small shard counts.
//!
//! The pool uses [`RseCoder`]; `README.md` ("Performance") has the numbers behind that choice.
//! Both take shards as borrowed slices and write in place: the hot path allocates nothing.

use parking_lot::Mutex;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::fmt;

/// The most shards (data + parity) a stripe can have: `rs:K+M` is limited to K + M <= 64.
pub const MAX_SHARDS: usize = 64;

/// Why an erasure-coding call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shard counts, sizes or present flags do not match the code's shape.
    #[error("bad shard shape: {0}")]
    Shape(&'static str),
    /// Fewer than `needed` shards are present.
    #[error("too few shards: {present} present, {needed} needed")]
    TooFewShards {
        /// Shards present.
        present: usize,
        /// Data shards of the code.
        needed: usize,
    },
    /// The library refused (a message of its own).
    #[error("erasure library: {0}")]
    Library(String),
}

/// A systematic `k + m` erasure code over equal-sized shards: shards `0..k` are data, `k..k+m`
/// parity.
pub trait ErasureCoder: Send + Sync + fmt::Debug {
    /// Data shards per stripe (k).
    fn data_shards(&self) -> usize;
    /// Parity shards per stripe (m).
    fn parity_shards(&self) -> usize;
    /// A short name for benchmarks and status output.
    fn name(&self) -> &'static str;
    /// Compute the `m` parity shards of `data` (`k` shards of one length) into `parity`.
    ///
    /// # Errors
    /// [`CodecError::Shape`] if the counts or lengths do not match.
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError>;
    /// Overwrite every shard whose `present` flag is false with its reconstructed content.
    /// Present shards are not modified. On error the absent shards are unspecified.
    ///
    /// # Errors
    /// [`CodecError::TooFewShards`] with fewer than `k` shards present; `Shape` on a mismatch.
    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError>;
    /// As [`ErasureCoder::reconstruct`] for the absent *data* shards only: absent parity shards
    /// are left unspecified (a coder that cannot skip them rebuilds them too).
    ///
    /// # Errors
    /// As [`ErasureCoder::reconstruct`].
    fn reconstruct_data(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError> {
        self.reconstruct(shards, present)
    }
    /// Whether the parity shards of `shards` (all k + m) are what the data encodes to.
    ///
    /// # Errors
    /// [`CodecError::Shape`] if the counts or lengths do not match.
    fn verify(&self, shards: &[&[u8]]) -> Result<bool, CodecError> {
        let (k, m) = (self.data_shards(), self.parity_shards());
        let len = shards.first().map_or(0, |s| s.len());
        if shards.len() != k + m || len == 0 {
            return Err(CodecError::Shape("expected k + m non-empty shards"));
        }
        let mut parity = vec![0u8; m * len];
        let mut outputs: Vec<&mut [u8]> = parity.chunks_mut(len).collect();
        self.encode(&shards[..k], &mut outputs)?;
        Ok(outputs.iter().zip(&shards[k..]).all(|(a, b)| **a == **b))
    }
}

fn check_shape(
    coder: &dyn ErasureCoder,
    shards: &[&mut [u8]],
    present: &[bool],
) -> Result<usize, CodecError> {
    let total = coder.data_shards() + coder.parity_shards();
    if shards.len() != total || present.len() != total {
        return Err(CodecError::Shape(
            "expected one buffer and one flag per shard",
        ));
    }
    let len = shards.first().map_or(0, |s| s.len());
    if len == 0 || shards.iter().any(|s| s.len() != len) {
        return Err(CodecError::Shape(
            "shards must be non-empty and of one length",
        ));
    }
    let count = present.iter().filter(|p| **p).count();
    if count < coder.data_shards() {
        return Err(CodecError::TooFewShards {
            present: count,
            needed: coder.data_shards(),
        });
    }
    Ok(len)
}

/// `reed-solomon-erasure` (GF(2^8)), the pool's codec.
pub struct RseCoder {
    inner: ReedSolomon,
}

impl fmt::Debug for RseCoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RseCoder({}+{})",
            self.inner.data_shard_count(),
            self.inner.parity_shard_count()
        )
    }
}

impl RseCoder {
    /// A `data + parity` code.
    ///
    /// # Errors
    /// [`CodecError::Library`] if the library rejects the parameters.
    pub fn new(data: usize, parity: usize) -> Result<Self, CodecError> {
        let inner =
            ReedSolomon::new(data, parity).map_err(|e| CodecError::Library(format!("{e:?}")))?;
        Ok(Self { inner })
    }
}

/// A borrowed shard as `reed-solomon-erasure` wants it for in-place reconstruction: the library
/// asks to "initialize" an absent shard, and we hand it the caller's buffer instead of a new one.
struct Borrowed<'a> {
    bytes: &'a mut [u8],
    present: bool,
}

impl reed_solomon_erasure::ReconstructShard<reed_solomon_erasure::galois_8::Field>
    for Borrowed<'_>
{
    fn len(&self) -> Option<usize> {
        self.present.then_some(self.bytes.len())
    }
    fn get(&mut self) -> Option<&mut [u8]> {
        if self.present {
            Some(self.bytes)
        } else {
            None
        }
    }
    fn get_or_initialize(
        &mut self,
        len: usize,
    ) -> Result<&mut [u8], Result<&mut [u8], reed_solomon_erasure::Error>> {
        if self.present {
            Ok(self.bytes)
        } else if self.bytes.len() == len {
            // "Newly initialized": the library writes the reconstruction here.
            Err(Ok(self.bytes))
        } else {
            Err(Err(reed_solomon_erasure::Error::IncorrectShardSize))
        }
    }
}

impl ErasureCoder for RseCoder {
    fn data_shards(&self) -> usize {
        self.inner.data_shard_count()
    }
    fn parity_shards(&self) -> usize {
        self.inner.parity_shard_count()
    }
    fn name(&self) -> &'static str {
        "reed-solomon-erasure"
    }
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        self.inner
            .encode_sep(data, parity)
            .map_err(|e| CodecError::Library(format!("{e:?}")))
    }
    fn verify(&self, shards: &[&[u8]]) -> Result<bool, CodecError> {
        self.inner
            .verify(shards)
            .map_err(|e| CodecError::Library(format!("{e:?}")))
    }
    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError> {
        self.rebuild(shards, present, false)
    }

    fn reconstruct_data(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError> {
        self.rebuild(shards, present, true)
    }
}

impl RseCoder {
    /// The absent shards of `shards` rebuilt (`data_only`: the data shards alone).
    fn rebuild(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
        data_only: bool,
    ) -> Result<(), CodecError> {
        check_shape(self, shards, present)?;
        if present.iter().all(|p| *p) {
            return Ok(());
        }
        // A fixed array of borrowed shards: no allocation per call.
        let mut borrowed: [Option<Borrowed<'_>>; MAX_SHARDS] = std::array::from_fn(|_| None);
        let count = shards.len();
        for ((slot, bytes), present) in borrowed.iter_mut().zip(shards.iter_mut()).zip(present) {
            *slot = Some(Borrowed {
                bytes,
                present: *present,
            });
        }
        let mut list: [Borrowed<'_>; MAX_SHARDS] = borrowed.map(|b| {
            b.unwrap_or(Borrowed {
                bytes: &mut [],
                present: false,
            })
        });
        let rebuilt = if data_only {
            self.inner.reconstruct_data(&mut list[..count])
        } else {
            self.inner.reconstruct(&mut list[..count])
        };
        rebuilt.map_err(|e| CodecError::Library(format!("{e:?}")))
    }
}

/// `reed-solomon-simd` (GF(2^16), FFT), kept for the benchmarks that justify the choice.
pub struct RssCoder {
    data: usize,
    parity: usize,
    encoder: Mutex<Option<reed_solomon_simd::ReedSolomonEncoder>>,
    decoder: Mutex<Option<reed_solomon_simd::ReedSolomonDecoder>>,
}

impl fmt::Debug for RssCoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RssCoder({}+{})", self.data, self.parity)
    }
}

impl RssCoder {
    /// A `data + parity` code.
    ///
    /// # Errors
    /// [`CodecError::Library`] if the library rejects the parameters.
    pub fn new(data: usize, parity: usize) -> Result<Self, CodecError> {
        if !reed_solomon_simd::ReedSolomonEncoder::supports(data, parity) {
            return Err(CodecError::Library(format!(
                "{data}+{parity} is not supported"
            )));
        }
        Ok(Self {
            data,
            parity,
            encoder: Mutex::new(None),
            decoder: Mutex::new(None),
        })
    }
}

fn rss_err(err: reed_solomon_simd::Error) -> CodecError {
    CodecError::Library(err.to_string())
}

impl RssCoder {
    /// Run the encoder (created once, reset per call) over `data` into `parity`.
    fn encode_with(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        let len = data.first().map_or(0, |d| d.len());
        let mut slot = self.encoder.lock();
        let encoder = match slot.as_mut() {
            Some(encoder) => {
                encoder
                    .reset(self.data, self.parity, len)
                    .map_err(rss_err)?;
                encoder
            }
            None => slot.insert(
                reed_solomon_simd::ReedSolomonEncoder::new(self.data, self.parity, len)
                    .map_err(rss_err)?,
            ),
        };
        for shard in data {
            encoder.add_original_shard(shard).map_err(rss_err)?;
        }
        let result = encoder.encode().map_err(rss_err)?;
        for (out, recovery) in parity.iter_mut().zip(result.recovery_iter()) {
            out.copy_from_slice(recovery);
        }
        Ok(())
    }
}

impl ErasureCoder for RssCoder {
    fn data_shards(&self) -> usize {
        self.data
    }
    fn parity_shards(&self) -> usize {
        self.parity
    }
    fn name(&self) -> &'static str {
        "reed-solomon-simd"
    }
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        let len = data.first().map_or(0, |d| d.len());
        if data.len() != self.data
            || parity.len() != self.parity
            || data.iter().any(|d| d.len() != len)
            || parity.iter().any(|p| p.len() != len)
        {
            return Err(CodecError::Shape(
                "expected k data and m parity shards of one length",
            ));
        }
        self.encode_with(data, parity)
    }
    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError> {
        let len = check_shape(self, shards, present)?;
        if present.iter().all(|p| *p) {
            return Ok(());
        }
        let data_missing = present[..self.data].iter().any(|p| !*p);
        if data_missing {
            let mut slot = self.decoder.lock();
            let decoder = match slot.as_mut() {
                Some(decoder) => {
                    decoder
                        .reset(self.data, self.parity, len)
                        .map_err(rss_err)?;
                    decoder
                }
                None => slot.insert(
                    reed_solomon_simd::ReedSolomonDecoder::new(self.data, self.parity, len)
                        .map_err(rss_err)?,
                ),
            };
            for (index, shard) in shards.iter().enumerate() {
                if !present[index] {
                    continue;
                }
                if index < self.data {
                    decoder
                        .add_original_shard(index, &**shard)
                        .map_err(rss_err)?;
                } else {
                    decoder
                        .add_recovery_shard(index - self.data, &**shard)
                        .map_err(rss_err)?;
                }
            }
            let result = decoder.decode().map_err(rss_err)?;
            for (index, restored) in result.restored_original_iter() {
                shards[index].copy_from_slice(restored);
            }
        }
        if present[self.data..].iter().any(|p| !*p) {
            // Parity is lost too: the data is whole now, so encode it again.
            let (data, parity) = shards.split_at_mut(self.data);
            let inputs: [&[u8]; MAX_SHARDS] =
                std::array::from_fn(|i| data.get(i).map_or(&[][..], |d| &**d));
            let mut outputs: [&mut [u8]; MAX_SHARDS] = std::array::from_fn(|_| &mut [][..]);
            let mut scratch = vec![0u8; len * self.parity];
            for (out, piece) in outputs.iter_mut().zip(scratch.chunks_mut(len)) {
                *out = piece;
            }
            self.encode_with(&inputs[..self.data], &mut outputs[..self.parity])?;
            for (index, shard) in parity.iter_mut().enumerate() {
                if !present[self.data + index] {
                    shard.copy_from_slice(&scratch[index * len..(index + 1) * len]);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn coders(k: usize, m: usize) -> Vec<Box<dyn ErasureCoder>> {
        vec![
            Box::new(RseCoder::new(k, m).unwrap()),
            Box::new(RssCoder::new(k, m).unwrap()),
        ]
    }

    /// Both coders must rebuild every pattern of up to m lost shards byte-exact, leave present
    /// shards alone, and refuse m + 1 losses.
    #[test]
    fn both_coders_reconstruct_every_pattern_and_refuse_too_many() {
        let seed = crate::testing::seed(7);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (k, m) in [(4, 2), (3, 3), (8, 3)] {
            let len = 512;
            let data: Vec<Vec<u8>> = (0..k)
                .map(|_| (0..len).map(|_| rng.gen()).collect())
                .collect();
            for coder in coders(k, m) {
                let mut parity = vec![vec![0u8; len]; m];
                {
                    let inputs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                    let mut outputs: Vec<&mut [u8]> =
                        parity.iter_mut().map(Vec::as_mut_slice).collect();
                    coder.encode(&inputs, &mut outputs).unwrap();
                }
                let full: Vec<Vec<u8>> = data.iter().cloned().chain(parity).collect();
                for pattern in 0u32..(1 << (k + m)) {
                    let lost = pattern.count_ones() as usize;
                    if lost == 0 {
                        continue;
                    }
                    let present: Vec<bool> = (0..k + m).map(|i| pattern & (1 << i) == 0).collect();
                    let mut shards = full.clone();
                    for (i, shard) in shards.iter_mut().enumerate() {
                        if !present[i] {
                            shard.fill(0xEE);
                        }
                    }
                    let mut views: Vec<&mut [u8]> =
                        shards.iter_mut().map(Vec::as_mut_slice).collect();
                    let result = coder.reconstruct(&mut views, &present);
                    if lost <= m {
                        assert!(
                            result.is_ok(),
                            "{coder:?} pattern {pattern:b} seed {seed}: {result:?}"
                        );
                        assert_eq!(shards, full, "{coder:?} pattern {pattern:b} seed {seed}");
                    } else {
                        assert!(
                            matches!(result, Err(CodecError::TooFewShards { .. })),
                            "{coder:?} pattern {pattern:b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_two_coders_are_different_codes_but_both_systematic() {
        // GF(2^8) and GF(2^16) parity differ; what matters is that each decodes its own.
        let data = [vec![1u8; 64], vec![2u8; 64]];
        let inputs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parities = Vec::new();
        for coder in coders(2, 1) {
            let mut parity = vec![0u8; 64];
            coder.encode(&inputs, &mut [&mut parity[..]]).unwrap();
            parities.push(parity);
        }
        // Both are non-trivial (not all zero).
        assert!(parities.iter().all(|p| p.iter().any(|b| *b != 0)));
        let bad = RseCoder::new(2, 1).unwrap();
        let mut short = [0u8; 32];
        assert!(bad.encode(&inputs, &mut [&mut short[..]]).is_err());
    }
}
