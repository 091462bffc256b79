//! Units and indices as newtypes, so a stripe number is never mistaken for a slot number.
//! Nothing here does I/O; conversions are checked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes in a sector: the unit of atomicity we assume nowhere, but the unit of alignment everywhere.
pub const SECTOR_BYTES: u64 = 4096;

/// Index of a logical stripe: logical byte offset / stripe data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StripeId(pub u64);

/// Index of a physical slot: a place on the devices that can hold one whole stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotId(pub u64);

/// Index of a data member device within the pool (0-based, position in the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceIndex(pub usize);

/// Index of a shard within a stripe (0..width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardIndex(pub usize);

/// Monotonic write generation: every stripe write gets a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

impl fmt::Display for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for DeviceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Round `value` up to a multiple of `align` (which must be non-zero).
#[must_use]
pub fn round_up(value: u64, align: u64) -> u64 {
    assert!(align > 0, "alignment must be non-zero");
    value.div_ceil(align) * align
}

/// The size suffixes [`parse_size`] accepts, as said in its errors and the command's help.
pub const SIZE_UNITS: &str = "a plain number of bytes, or a number with a suffix K, M, G or T \
(optionally followed by i, B or iB, any case; all binary: K = 1024, M = 1024 K, ...); \
a decimal fraction is taken if it makes a whole number of bytes (1.5G, 0.5K)";

/// Parse a size such as `64M`, `1GiB`, `4096`, `16k`, `1.5G`. Every suffix is binary
/// (K = 1024, `64mb` = 64 MiB); see [`SIZE_UNITS`].
///
/// # Errors
/// Returns a message naming the input when it is not a number with an optional binary suffix,
/// naming the accepted suffixes when the suffix is unknown, and refusing a fraction that is
/// not a whole number of bytes or a size past `u64`.
pub fn parse_size(input: &str) -> std::result::Result<u64, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!(
            "invalid size {input:?}: expected a number like 64M, 1.5G or 4096"
        ));
    }
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
        "t" | "tb" | "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {input:?}: unknown suffix {other:?}; accepted: K, M, G, T, optionally followed by i, B or iB (binary: K = 1024), e.g. 64M, 1.5GiB, 4096"
            ))
        }
    };
    let too_large = || format!("invalid size {input:?}: too large");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // fraction / 10^digits of the multiplier, exactly: at most 19 digits keep 10^digits
        // in u64, and u128 keeps the product.
        if fraction.len() > 19 {
            return Err(format!("invalid size {input:?}: too many decimal digits"));
        }
        let digits: u128 = fraction.parse().map_err(|_| too_large())?;
        let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| too_large())?);
        let part = digits * u128::from(multiplier);
        if !part.is_multiple_of(scale) {
            return Err(format!(
                "invalid size {input:?}: not a whole number of bytes"
            ));
        }
        let part = u64::try_from(part / scale).map_err(|_| too_large())?;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Human-readable binary size (`1.5 GiB`).
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Average rate of `bytes` over `elapsed`, in bytes per second (0 before any time passed).
#[must_use]
pub fn bytes_per_s(bytes: u64, elapsed: std::time::Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = (bytes as f64 / secs) as u64;
        rate
    } else {
        0
    }
}

/// Seconds since the Unix epoch now (0 if the clock is before it).
#[must_use]
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Unix time as `2026-11-26 09:17:59 UTC` (no time-zone database needed).
#[must_use]
pub fn utc_time(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rest = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, in unsigned form:
    // shift the epoch to 0000-03-01 so leap days fall at the end of each era's year).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A Unix time as RFC 3339 in UTC, `2026-11-26T09:17:59Z`.
#[must_use]
pub fn rfc3339(unix_secs: u64) -> String {
    let civil = utc_time(unix_secs);
    let civil = civil.strip_suffix(" UTC").unwrap_or(&civil);
    format!("{}Z", civil.replacen(' ', "T", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_a_t_and_a_z() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn utc_time_matches_known_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_795_685_879), "2026-11-26 09:37:59 UTC");
        assert_eq!(utc_time(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn decimal_sizes_and_binary_suffixes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".5k"), Ok(512));
        assert_eq!(parse_size("2.0M"), Ok(2 << 20));
        assert_eq!(parse_size("2."), Ok(2));
        assert_eq!(parse_size("64mb"), Ok(64 << 20), "every suffix is binary");
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        for bad in ["1.3K", "0.1", "1.5"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("whole number of bytes"), "{bad}: {err}");
        }
        for bad in [".", "1.2.3M", "M", "-1M", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let err = parse_size("64Q").unwrap_err();
        assert!(
            err.contains("unknown suffix \"q\"") && err.contains("K, M, G, T"),
            "{err}"
        );
        assert!(parse_size("16777216.5T").is_err(), "past u64");
        assert!(parse_size("0.99999999999999999999G").is_err());
    }
}
