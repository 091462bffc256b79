//! Forwarding directory records (tree 5): for a segment the cleaner evacuated while recovery
//! points shared some of its blocks, where each of those blocks went (docs/FORMAT.md, V4.4, V4.6).
//!
//! ```text
//! 0        generations used u8 (0..=3)
//! 1..8     zero
//! 8..80    3 × (evacuated-at sequence u48 ‖ zero u16 ‖ forwarding page pointer 16 B); unused: zero
//! 80..128  zero
//! ```
//!
//! Generations are in increasing evacuation order; each points at a page (level 1) holding one
//! block pointer per data block of the segment.

use super::le;
use super::pointer::BlockPointer;

/// Bytes of one record.
pub const FORWARD_RECORD_BYTES: usize = 128;
/// Most evacuations one record remembers.
pub const FORWARD_GENERATIONS: usize = 3;
const GENERATION_BYTES: usize = 24;
const FIRST_AT: usize = 8;

/// One evacuation of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardGeneration {
    /// The sequence at which the cleaner evacuated the segment.
    pub evacuated_at: u64,
    /// The forwarding page: new pointer of every data block of the segment.
    pub page: BlockPointer,
}

/// The forwarding directory record of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardRecord {
    /// Evacuations, oldest first (at most three).
    pub generations: Vec<ForwardGeneration>,
}

impl ForwardRecord {
    /// The 128 bytes of this record.
    ///
    /// # Panics
    /// If it holds more than three generations (a caller bug).
    #[must_use]
    pub fn encode(&self) -> [u8; FORWARD_RECORD_BYTES] {
        assert!(
            self.generations.len() <= FORWARD_GENERATIONS,
            "forwarding generations"
        );
        let mut bytes = [0u8; FORWARD_RECORD_BYTES];
        bytes[0] = self.generations.len() as u8;
        for (g, generation) in self.generations.iter().enumerate() {
            let at = FIRST_AT + g * GENERATION_BYTES;
            le::put(&mut bytes, at, 6, generation.evacuated_at);
            bytes[at + 8..at + 24].copy_from_slice(&generation.page.encode());
        }
        bytes
    }

    /// The record in `bytes` (128 of them).
    ///
    /// # Errors
    /// A reason when the bytes are not what an encoder writes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != FORWARD_RECORD_BYTES {
            return Err(format!(
                "forwarding record is {} bytes, not 128",
                bytes.len()
            ));
        }
        let used = usize::from(bytes[0]);
        if used > FORWARD_GENERATIONS {
            return Err(format!("{used} forwarding generations"));
        }
        let end_of_used = FIRST_AT + used * GENERATION_BYTES;
        if bytes[1..FIRST_AT].iter().any(|b| *b != 0)
            || bytes[end_of_used..].iter().any(|b| *b != 0)
        {
            return Err("forwarding record has reserved bytes set".to_string());
        }
        let mut generations: Vec<ForwardGeneration> = Vec::with_capacity(used);
        for g in 0..used {
            let at = FIRST_AT + g * GENERATION_BYTES;
            let evacuated_at = le::get(bytes, at, 6);
            if bytes[at + 6..at + 8] != [0, 0] {
                return Err(format!("generation {g}: reserved bytes set"));
            }
            let page = BlockPointer::decode(&bytes[at + 8..at + 24])
                .map_err(|e| format!("generation {g}: {e}"))?;
            if page.address().is_none() || page.level() != 1 {
                return Err(format!(
                    "generation {g} does not point at a forwarding page"
                ));
            }
            if generations
                .last()
                .is_some_and(|prev| prev.evacuated_at >= evacuated_at)
            {
                return Err(format!("generation {g} is not newer than the one before"));
            }
            generations.push(ForwardGeneration { evacuated_at, page });
        }
        Ok(Self { generations })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_out_of_order_generations_are_refused() {
        let record = ForwardRecord {
            generations: vec![
                ForwardGeneration {
                    evacuated_at: 10,
                    page: BlockPointer::written(5, 10, 1, 77),
                },
                ForwardGeneration {
                    evacuated_at: 20,
                    page: BlockPointer::written(6, 20, 1, 78),
                },
            ],
        };
        let bytes = record.encode();
        assert_eq!(ForwardRecord::decode(&bytes), Ok(record));
        assert_eq!(
            ForwardRecord::decode(&[0; 128]),
            Ok(ForwardRecord::default())
        );
        let mut swapped = bytes;
        swapped.copy_within(8..32, 104);
        swapped.copy_within(32..56, 8);
        swapped.copy_within(104..128, 32);
        swapped[104..].fill(0);
        assert!(ForwardRecord::decode(&swapped).is_err());
        let mut too_many = bytes;
        too_many[0] = 4;
        assert!(ForwardRecord::decode(&too_many).is_err());
        let mut hole = [0u8; 128];
        hole[0] = 1;
        hole[8] = 1;
        hole[16..32].copy_from_slice(&BlockPointer::hole(1).encode());
        assert!(ForwardRecord::decode(&hole).is_err());
    }
}
