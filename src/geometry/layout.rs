//! The redundancy layouts and their text form (`mirror:2`, `raid10:2`, `rs:4+2`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a stripe is made redundant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Every block on `copies` devices; the pool has exactly `copies` devices.
    Mirror {
        /// Number of copies (2..=8).
        copies: usize,
    },
    /// Striped across groups of `copies`-way mirrors.
    Raid10 {
        /// Copies in each mirror group (2..=8).
        copies: usize,
    },
    /// Reed-Solomon: `data` data chunks plus `parity` parity chunks per stripe.
    ReedSolomon {
        /// Data chunks per stripe.
        data: usize,
        /// Parity chunks per stripe (1..=4).
        parity: usize,
    },
}

impl Layout {
    /// Shards in one stripe on a pool of `devices` data devices.
    #[must_use]
    pub fn width(&self, devices: usize) -> usize {
        match *self {
            Layout::Mirror { copies } => copies,
            Layout::Raid10 { .. } => devices,
            Layout::ReedSolomon { data, parity } => data + parity,
        }
    }
    /// Data chunks in one stripe.
    #[must_use]
    pub fn data_chunks(&self, devices: usize) -> usize {
        match *self {
            Layout::Mirror { .. } => 1,
            Layout::Raid10 { copies } => devices / copies,
            Layout::ReedSolomon { data, .. } => data,
        }
    }
    /// Device losses always survived.
    #[must_use]
    pub fn tolerance(&self) -> usize {
        match *self {
            Layout::Mirror { copies } | Layout::Raid10 { copies } => copies - 1,
            Layout::ReedSolomon { parity, .. } => parity,
        }
    }

    /// Whether every stripe can still be served (and written) with the data positions that are
    /// `in_service`, given in layout order.
    #[must_use]
    pub fn available_with(&self, in_service: &[bool]) -> bool {
        match *self {
            Layout::ReedSolomon { parity, .. } => {
                in_service.iter().filter(|o| !**o).count() <= parity
            }
            Layout::Mirror { copies } | Layout::Raid10 { copies } => in_service
                .chunks(copies)
                .all(|group| group.iter().any(|o| *o)),
        }
    }

    /// How many more positions could go out of service without losing data, when those
    /// `in_service` (layout order) are.
    #[must_use]
    pub fn remaining_tolerance_with(&self, in_service: &[bool]) -> usize {
        match *self {
            Layout::ReedSolomon { parity, .. } => {
                parity.saturating_sub(in_service.iter().filter(|o| !**o).count())
            }
            Layout::Mirror { copies } | Layout::Raid10 { copies } => in_service
                .chunks(copies)
                .map(|group| group.iter().filter(|o| **o).count().saturating_sub(1))
                .min()
                .unwrap_or(0),
        }
    }

    /// Check that `devices` data devices suit this layout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the rule that is broken.
    pub fn check_device_count(&self, devices: usize) -> Result<()> {
        let problem = match *self {
            Layout::Mirror { copies } if devices != copies => Some(format!(
                "{self} needs exactly {copies} devices, got {devices}"
            )),
            Layout::Raid10 { copies }
                if !devices.is_multiple_of(copies) || devices < 2 * copies =>
            {
                Some(format!(
                    "{self} needs a multiple of {copies} devices, at least {}, got {devices}",
                    2 * copies
                ))
            }
            Layout::ReedSolomon { data, parity } if devices < data + parity => Some(format!(
                "{self} needs at least {} devices, got {devices}",
                data + parity
            )),
            _ => None,
        };
        match problem {
            Some(message) => Err(Error::InvalidConfig(message)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Mirror { copies } => write!(f, "mirror:{copies}"),
            Layout::Raid10 { copies } => write!(f, "raid10:{copies}"),
            Layout::ReedSolomon { data, parity } => write!(f, "rs:{data}+{parity}"),
        }
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidLayout {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (kind, args) = input
            .split_once(':')
            .ok_or_else(|| invalid("missing ':'"))?;
        let number = |text: &str| -> Result<usize> {
            text.trim()
                .parse::<usize>()
                .map_err(|_| invalid(&format!("{text:?} is not a number")))
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "mirror" | "raid10" => {
                let copies = number(args)?;
                if !(2..=8).contains(&copies) {
                    return Err(invalid("copies must be 2..=8"));
                }
                Ok(if kind.trim().eq_ignore_ascii_case("mirror") {
                    Layout::Mirror { copies }
                } else {
                    Layout::Raid10 { copies }
                })
            }
            "rs" => {
                let (data, parity) = args
                    .split_once('+')
                    .ok_or_else(|| invalid("expected K+M"))?;
                let (data, parity) = (number(data)?, number(parity)?);
                if data == 0 {
                    return Err(invalid("K must be at least 1"));
                }
                if !(1..=4).contains(&parity) {
                    return Err(invalid("M must be 1..=4"));
                }
                if data + parity > 64 {
                    return Err(invalid("K+M must be at most 64"));
                }
                Ok(Layout::ReedSolomon { data, parity })
            }
            other => Err(invalid(&format!("unknown kind {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_roundtrip() {
        for text in [
            "mirror:2", "mirror:8", "raid10:2", "rs:4+2", "rs:10+4", "rs:1+1",
        ] {
            let layout: Layout = text.parse().unwrap();
            assert_eq!(layout.to_string(), text);
        }
    }

    #[test]
    fn bad_strings_are_rejected() {
        for text in [
            "", "mirror", "mirror:1", "mirror:9", "rs:4", "rs:0+2", "rs:4+5", "rs:4+0", "raid5:3",
            "rs:a+b",
        ] {
            assert!(
                matches!(text.parse::<Layout>(), Err(Error::InvalidLayout { .. })),
                "{text}"
            );
        }
    }
}
