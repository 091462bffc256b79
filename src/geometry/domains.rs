//! Failure domains (docs/FORMAT.md V4.16, section 2): whether losing every member of any one
//! domain (a host, a rack) loses nothing, for a given assignment of data positions to domains.
//!
//! The rule is checked by enumerating the placement itself ([`Geometry::shard_location`]) over
//! one period of its rotation, not by a formula per layout, so it holds for `rs:K+M` on more
//! devices than `K+M`, for raid10's fixed mirror groups and for the metadata page copies alike.
//!
//! Owns: the rule and the names allowed for a domain. Does not own: where domains are recorded
//! (the superblock's member records) or when the rule is asked (the pool).

use super::{Geometry, Layout};
use crate::types::{ShardIndex, SlotId};

/// Longest domain name, bytes.
pub const DOMAIN_NAME_MAX: usize = 64;

/// Check a domain name: 1 to 64 bytes of letters, digits and `. _ -`.
///
/// # Errors
/// A message naming the name and the rule.
pub fn check_domain_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > DOMAIN_NAME_MAX || !name.chars().all(allowed) {
        return Err(format!(
            "failure domain {name:?}: 1 to {DOMAIN_NAME_MAX} letters, digits and . _ -"
        ));
    }
    Ok(())
}

/// Slots after which the placement repeats: `rs:K+M` rotates each row of the grid by its row
/// number, so slot `s + D` is slot `s` shifted by `width` devices, and `D·D` slots (at most)
/// bring every shift back; mirror and raid10 put every slot alike.
fn period(geometry: &Geometry) -> u64 {
    let devices = geometry.devices as u64;
    let slots = match geometry.layout {
        Layout::Mirror { .. } | Layout::Raid10 { .. } => 1,
        Layout::ReedSolomon { .. } => devices * devices,
    };
    slots.min(geometry.slots)
}

/// Whether losing every member of any one domain loses nothing, with data position `i` in
/// domain `domains[i]` (one entry per data position):
///
/// * data: of each slot, at most `M` shards of `rs:K+M` in one domain; of each chunk of
///   `mirror:N` / `raid10:N`, at most `N − 1` copies in one domain;
/// * metadata: the `tolerance + 1` copies of every page position of a slot never all in one
///   domain.
///
/// # Errors
/// A message naming the domain, the slot and what it would hold against what is tolerated.
pub fn check_domains(geometry: &Geometry, domains: &[&str]) -> Result<(), String> {
    if domains.len() != geometry.devices {
        return Err(format!(
            "{} failure domains for {} data positions",
            domains.len(),
            geometry.devices
        ));
    }
    let width = geometry.width();
    let copies = geometry.metadata_copies();
    for slot in 0..period(geometry) {
        let domain_of = |shard: usize| {
            let (device, _) = geometry.shard_location(SlotId(slot), ShardIndex(shard));
            domains[device.0]
        };
        // Shard groups that must never be lost whole, with how many of each one domain may
        // hold, and what they are (for the message).
        let mut groups: Vec<(std::ops::Range<usize>, usize, &str)> = Vec::new();
        match geometry.layout {
            Layout::ReedSolomon { parity, .. } => groups.push((0..width, parity, "shards")),
            Layout::Mirror { copies: n } | Layout::Raid10 { copies: n } => {
                groups.extend((0..width / n).map(|j| (j * n..(j + 1) * n, n - 1, "copies")));
            }
        }
        groups.extend(
            (0..width / copies).map(|g| (g * copies..(g + 1) * copies, copies - 1, "page copies")),
        );
        for (shards, most, what) in groups {
            let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
            for shard in shards.clone() {
                *count.entry(domain_of(shard)).or_default() += 1;
            }
            if let Some((domain, held)) = count.into_iter().find(|(_, n)| *n > most) {
                return Err(format!(
                    "failure domain {domain:?} would hold {held} of the {} {what} of slot {slot} \
                     ({} tolerates losing {most}): losing that domain would lose data",
                    shards.len(),
                    geometry.layout
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(layout: &str, devices: usize) -> Geometry {
        Geometry::new(layout.parse().unwrap(), devices, 16384, 4096, 64 << 20).unwrap()
    }

    /// Every assignment of `devices` positions to `domains` names, brute force: the rule's
    /// verdict must equal a model that fails each domain in turn and asks the layout itself
    /// whether every slot stays readable (`Layout::available_with` per slot's shards).
    #[test]
    fn the_rule_agrees_with_losing_each_domain_in_turn() {
        for (layout, devices) in [
            ("rs:2+1", 3),
            ("rs:2+1", 4),
            ("rs:2+2", 5),
            ("mirror:2", 2),
            ("mirror:3", 3),
            ("raid10:2", 4),
            ("raid10:2", 6),
        ] {
            let g = geometry(layout, devices);
            let names = ["a", "b", "c", "d"];
            let total = names.len().pow(devices as u32);
            let (mut passed, mut refused) = (0, 0);
            for code in 0..total {
                let assignment: Vec<&str> = (0..devices)
                    .map(|i| names[(code / names.len().pow(i as u32)) % names.len()])
                    .collect();
                let model = names.iter().all(|lost| {
                    (0..period(&g)).all(|slot| {
                        let in_service: Vec<bool> = (0..g.width())
                            .map(|shard| {
                                let (d, _) = g.shard_location(SlotId(slot), ShardIndex(shard));
                                assignment[d.0] != *lost
                            })
                            .collect();
                        let copies = g.metadata_copies();
                        g.layout.available_with(&in_service)
                            && in_service
                                .chunks_exact(copies)
                                .all(|c| c.iter().any(|o| *o))
                    })
                });
                let verdict = check_domains(&g, &assignment).is_ok();
                assert_eq!(verdict, model, "{layout} on {devices}: {assignment:?}");
                if verdict {
                    passed += 1;
                } else {
                    refused += 1;
                }
            }
            assert!(passed > 0 && refused > 0, "{layout}: {passed} / {refused}");
        }
    }

    #[test]
    fn three_hosts_of_two_pass_for_rs_4_2_and_two_of_three_do_not() {
        let g = geometry("rs:4+2", 6);
        assert!(check_domains(&g, &["h1", "h1", "h2", "h2", "h3", "h3"]).is_ok());
        let err = check_domains(&g, &["h1", "h1", "h1", "h2", "h2", "h2"]).unwrap_err();
        assert!(err.contains("\"h1\" would hold 3"), "{err}");
        // raid10: a mirror pair on one host is refused, pairs across hosts pass.
        let g = geometry("raid10:2", 4);
        assert!(check_domains(&g, &["a", "b", "a", "b"]).is_ok());
        assert!(check_domains(&g, &["a", "a", "b", "b"]).is_err());
        assert!(check_domains(&g, &["a", "b"]).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_domain_name("rack-1.host_2").is_ok());
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(check_domain_name(bad).is_err(), "{bad:?}");
        }
    }
}
