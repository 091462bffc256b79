//! The fault classes of issue 11, as ops: localized damage beyond the tolerance, power cuts in
//! the swap-in of a healthy replace, administration given devices it must refuse, opens with
//! member lists in any order and subset, and read-only opens that must change no byte.

use super::{Check, World};
use crate::device::{Device, DeviceError, MemDevice, SharedDevice};
use crate::error::Error;
use crate::geometry::Layout;
use crate::testing::{random_bytes, rng};
use crate::{CreateOptions, Pool, PoolStatus, ScrubOptions};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// [`World::swap_in_cut`] when no healthy replace is waiting for its swap-in.
pub(super) const DISARMED: i64 = i64::MIN;

/// Check that `online` refuses foreign devices, this pool's spares and its active members when
/// a member is faulted (issue 11, item 6: `online` used to relabel any device). A switch so the
/// check can be turned off to see what a campaign finds without it.
pub const CHECK_ONLINE_REFUSES_LABELLED: bool = true;

/// After a power cut and a reopen, check losing members against what the reopen read back,
/// before anything is written: the open must have made the recovered map durable on every
/// member (seed 295, mirror:2, `ReplaceHealthy { device: 10, cut_after: Some(28), seed:
/// 14931319308649931495 }` read wrong bytes when an open deferred its checkpoint). Off, a
/// write and a flush make the map durable everywhere before the check.
pub const CHECK_RECOVERED_MAP_SURVIVES_LOSSES: bool = true;

/// Wraps the device a healthy replace fills: its first flush once armed (the first request of
/// the swap-in, `finish_rebuild`; the rebuild's batches never flush) starts the power-cut
/// countdown, so a cut lands a seeded number of requests into the swap-in.
#[derive(Debug)]
pub(super) struct SwapInTrigger {
    pub(super) inner: SharedDevice,
    pub(super) armed: Arc<AtomicI64>,
    pub(super) countdown: Arc<AtomicI64>,
}

impl Device for SwapInTrigger {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        let cut = self.armed.swap(DISARMED, Ordering::SeqCst);
        if cut != DISARMED {
            self.countdown.store(cut, Ordering::SeqCst);
        }
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_unreachable(&self) -> bool {
        self.inner.is_unreachable()
    }
}

/// What a read of a range must give.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// The model's bytes (within the tolerance).
    Exact,
    /// `Unrecoverable`, never bytes.
    Lost,
    /// The model's bytes or `Unrecoverable` (intact chunks of a stripe beyond repair).
    ExactOrLost,
}

/// Merge sorted stripes into volume ranges.
fn merged_ranges(stripes: impl Iterator<Item = u64>, stripe_bytes: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for stripe in stripes {
        let start = stripe * stripe_bytes;
        match ranges.last_mut() {
            Some((s, len)) if *s + *len == start => *len += stripe_bytes,
            _ => ranges.push((start, stripe_bytes)),
        }
    }
    ranges
}

/// What a read of `offset..offset + len` must give, with `lost` stripes (and their destroyed
/// data chunks) beyond repair.
fn expectation(
    offset: u64,
    len: u64,
    lost: &BTreeMap<u64, BTreeSet<usize>>,
    stripe_bytes: u64,
    chunk: u64,
) -> Expect {
    let end = offset + len;
    let mut expect = Expect::Exact;
    for (stripe, destroyed) in lost.range(offset / stripe_bytes..=(end - 1) / stripe_bytes) {
        expect = Expect::ExactOrLost;
        for data_chunk in destroyed {
            let start = stripe * stripe_bytes + *data_chunk as u64 * chunk;
            if start < end && offset < start + chunk {
                return Expect::Lost;
            }
        }
    }
    expect
}

impl World<'_> {
    pub(super) fn count(&mut self, class: &str) {
        *self.stats.classes.entry(class.to_string()).or_default() += 1;
    }

    /// A device does not answer, or a member away is not back in service yet: the classes
    /// that give every device to an open, or compare every image, wait until it is back.
    pub(super) fn any_unreachable(&self) -> bool {
        self.disks.iter().any(|d| d.away || d.mem.is_unreachable())
    }

    pub(super) fn skip(&mut self) -> Check {
        self.stats.skipped += 1;
        Ok(())
    }

    /// Every device the simulation knows (pool devices, another pool's), byte for byte.
    fn images(&self) -> Vec<(String, Vec<u8>)> {
        self.disks
            .iter()
            .map(|d| &d.mem)
            .chain(&self.foreign)
            .map(|m| (m.name(), m.image()))
            .collect()
    }

    fn same_images(before: &[(String, Vec<u8>)], after: &[(String, Vec<u8>)], what: &str) -> Check {
        for ((name, old), (_, new)) in before.iter().zip(after) {
            if let Some(at) = old.iter().zip(new).position(|(a, b)| a != b) {
                return Err(format!("{what} changed {name} at byte {at}"));
            }
        }
        Ok(())
    }

    /// Close the pool cleanly (a failure is a violation within the tolerance); its last status.
    pub(super) fn close_pool(&mut self) -> std::result::Result<PoolStatus, String> {
        let pool = self.pool.take().ok_or("the pool is not open")?;
        let status = pool.status();
        let within = self.within_tolerance_of(&pool);
        match pool.close() {
            Ok(()) => {
                self.model.flushed();
                self.note_recorded_away_in(&status);
            }
            Err(err) if within => return Err(format!("close failed within tolerance: {err}")),
            Err(_) => {}
        }
        Ok(status)
    }

    /// Positions in service (not faulted, device present) and the disk serving each.
    fn in_service(&self, status: &PoolStatus) -> BTreeMap<usize, usize> {
        status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none() && d.state != "FAULTED" && d.state != "OFFLINE")
            .filter_map(|d| Some((d.index?, self.disk(&d.path)?)))
            .filter(|(_, disk)| !self.disks[*disk].plan.lock().is_gone())
            .collect()
    }

    /// Read `offset..offset + len` and hold it to `expect`.
    fn read_expect(&mut self, offset: u64, len: usize, expect: Expect) -> Check {
        if expect == Expect::Exact {
            return self.read_and_compare(offset, len);
        }
        let mut buf = vec![0u8; len];
        match self.pool()?.read_at(offset, &mut buf) {
            // (A misdirected write of zeros, say a superblock's padding, can land on a destroyed
            // chunk that held zeros: it then verifies again, rightly.)
            Ok(()) if expect == Expect::Lost
                && (buf.iter().any(|b| *b != 0) || buf != self.model.latest.read(offset, len)) =>
            {
                Err(format!(
                "{}a read of {len} bytes at {offset} returned bytes from a stripe beyond repair (its destroyed chunks cannot be known)",
                if buf == self.model.latest.read(offset, len) { "" } else { "WRONG BYTES: " }
            ))
            }
            Ok(()) => {
                self.stats.checked_reads += 1;
                if buf != self.model.latest.read(offset, len) {
                    return Err(format!(
                        "WRONG BYTES: read of {len} bytes at {offset} (an intact chunk of a stripe beyond repair)"
                    ));
                }
                Ok(())
            }
            Err(Error::Unrecoverable { .. }) => Ok(()),
            Err(err) => Err(format!(
                "read of {len} bytes at {offset} over a stripe beyond repair: {err} (expected Unrecoverable)"
            )),
        }
    }

    /// Lost stripes (with their destroyed data chunks) fail; every other byte is exact.
    fn check_lost(&mut self, lost: &BTreeMap<u64, BTreeSet<usize>>, repeat: usize) -> Check {
        let geometry = self.pool()?.geometry().clone();
        let stripe_bytes = geometry.stripe_data_bytes();
        let chunk = geometry.chunk_bytes;
        let size = self.model.latest.len();
        let mut reads: Vec<(u64, u64)> = Vec::new();
        for stripe in lost.keys() {
            let start = stripe * stripe_bytes;
            // Often enough to pass the error threshold: an application retrying.
            reads.extend(std::iter::repeat_n((start, stripe_bytes), repeat));
            for data_chunk in 0..geometry.data_chunks() as u64 {
                let at = start + data_chunk * chunk;
                reads.push((at, chunk));
                reads.push((at + chunk / 2, chunk / 4));
            }
            // Reads spanning into the neighbours.
            if start + stripe_bytes + stripe_bytes / 2 <= size {
                reads.push((start + stripe_bytes / 2, stripe_bytes));
            }
            if start >= stripe_bytes {
                reads.push((start - stripe_bytes / 2, stripe_bytes));
            }
        }
        for (offset, len) in reads {
            let expect = expectation(offset, len, lost, stripe_bytes, chunk);
            self.read_expect(offset, len as usize, expect)?;
        }
        // Everything else: exact, in runs between the lost stripes.
        let mut stripe = 0;
        while stripe < geometry.stripes {
            if lost.contains_key(&stripe) {
                stripe += 1;
                continue;
            }
            let mut end = stripe;
            while end < geometry.stripes && !lost.contains_key(&end) && end - stripe < 32 {
                end += 1;
            }
            self.read_expect(
                stripe * stripe_bytes,
                ((end - stripe) * stripe_bytes) as usize,
                Expect::Exact,
            )
            .map_err(|e| format!("outside the damaged stripes: {e}"))?;
            stripe = end;
        }
        Ok(())
    }

    /// No position serving a victim may be faulted (data errors never fault).
    fn check_victims_not_faulted(&self, victims: &BTreeMap<usize, usize>) -> Check {
        let status = self.pool()?.status();
        for device in &status.devices {
            if device.replacing.is_some() || device.state != "FAULTED" {
                continue;
            }
            // (A victim with injected faults may be faulted for those: a failed write.)
            let injected = victims
                .values()
                .any(|d| self.disks[*d].damaged && self.disks[*d].name == device.path);
            if device.index.is_some_and(|p| victims.contains_key(&p)) && !injected {
                return Err(format!(
                    "localized damage faulted {}: {}",
                    device.path,
                    device.reason.clone().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    pub(super) fn local_damage(&mut self, stripe: u64, count: u8, seed: u64) -> Check {
        if self.pool.is_none() || !self.within_tolerance() {
            return self.skip();
        }
        let mut rng = rng(seed);
        let geometry = self.pool()?.geometry().clone();
        let stripe_bytes = geometry.stripe_data_bytes();
        let first = stripe % geometry.stripes;
        let last = (first + u64::from(count.clamp(1, 3))).min(geometry.stripes);
        // Stripes never written hold nothing to damage: write them first.
        for s in first..last {
            if self
                .pool()?
                .shard_locations(crate::types::StripeId(s))
                .is_empty()
            {
                let data = random_bytes(&mut rng, stripe_bytes as usize);
                self.write(s * stripe_bytes, &data)?;
            }
        }
        self.flush()?;
        let status = self.pool()?.status();
        let in_service = self.in_service(&status);
        let tolerance = self.tolerance;
        let locations = self.pool()?.shard_locations(crate::types::StripeId(first));
        // Victims: more than the tolerance of the positions holding the first stripe, chosen so
        // that it is beyond repair (for copies: every copy of one data chunk).
        let mut victims: Vec<usize> = match geometry.layout {
            Layout::ReedSolomon { .. } => {
                let mut holders: Vec<usize> = locations
                    .iter()
                    .map(|l| l.device)
                    .filter(|p| in_service.contains_key(p))
                    .collect();
                holders.shuffle(&mut rng);
                let extra = usize::from(rng.gen_bool(0.3));
                holders.truncate(tolerance + 1 + extra);
                holders
            }
            Layout::Mirror { .. } | Layout::Raid10 { .. } => {
                let chunk = rng.gen_range(0..geometry.data_chunks());
                locations
                    .iter()
                    .filter(|l| l.data_chunk == Some(chunk))
                    .map(|l| l.device)
                    .collect()
            }
        };
        if victims.len() <= tolerance || victims.iter().any(|p| !in_service.contains_key(p)) {
            return self.skip();
        }
        if rng.gen_bool(0.3) {
            let others: Vec<usize> = in_service
                .keys()
                .copied()
                .filter(|p| !victims.contains(p))
                .collect();
            if let Some(p) = others.choose(&mut rng) {
                victims.push(*p);
            }
        }
        let victims: BTreeMap<usize, usize> = victims.iter().map(|p| (*p, in_service[p])).collect();
        // Damage every stripe of the run the victims put beyond repair, and only those.
        let mut lost = self.destroy_run(first..last, &victims, &geometry, &mut rng)?;
        if lost.is_empty() {
            return self.skip();
        }
        *self.stats.faults.entry("local-damage".into()).or_default() += 1;
        *self
            .stats
            .classes
            .entry("local-damage-lost-stripes".into())
            .or_default() += lost.len() as u64;
        // Reads there fail (often enough to pass the error threshold: an application retrying),
        // everything else is exact; nobody is faulted for it.
        let repeat = usize::try_from(crate::pool::DEFAULT_ERROR_THRESHOLD).unwrap_or(10) + 1;
        self.check_lost(&lost, repeat)
            .map_err(|e| format!("after localized damage: {e}"))?;
        self.check_victims_not_faulted(&victims)?;
        if rng.gen_bool(0.5) {
            let status = self.close_pool()?;
            self.open(&status)?;
            self.check_lost(&lost, 1)
                .map_err(|e| format!("after localized damage and a reopen: {e}"))?;
            self.check_victims_not_faulted(&victims)?;
        }
        // A scrub lists exactly the lost stripes, merged, naming the damaged devices, and its
        // tallies add up.
        self.scrub_after_damage(&mut lost, &victims, stripe_bytes)?;
        self.check_victims_not_faulted(&victims)?;
        self.check_lost(&lost, 1)
            .map_err(|e| format!("after localized damage and a scrub: {e}"))?;
        // Rewritten, the stripes are whole again.
        for s in lost.keys() {
            let data = random_bytes(&mut rng, stripe_bytes as usize);
            self.write(s * stripe_bytes, &data)?;
        }
        self.flush()?;
        self.verify("after rewriting the damaged stripes")?;
        // And `clear` takes the degraded state away again.
        if let Err(err) = self.pool()?.clear(None) {
            if self.within_tolerance() {
                return Err(format!("clear after localized damage failed: {err}"));
            }
        }
        self.count("local-damage");
        Ok(())
    }

    /// Overwrite, on the `victims` (position → disk), the shards of every stripe of `run` that
    /// they put beyond repair, and only those. Returns those stripes with the data chunks each
    /// lost.
    fn destroy_run(
        &mut self,
        run: std::ops::Range<u64>,
        victims: &BTreeMap<usize, usize>,
        geometry: &crate::geometry::Geometry,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<BTreeMap<u64, BTreeSet<usize>>, String> {
        let parity = match geometry.layout {
            Layout::ReedSolomon { parity, .. } => parity,
            _ => 0,
        };
        let mut lost: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
        for s in run {
            let locations = self.pool()?.shard_locations(crate::types::StripeId(s));
            let on_victims: Vec<_> = locations
                .iter()
                .filter(|l| victims.contains_key(&l.device))
                .collect();
            let destroyed: BTreeSet<usize> = match geometry.layout {
                Layout::ReedSolomon { .. } if on_victims.len() > parity => {
                    on_victims.iter().filter_map(|l| l.data_chunk).collect()
                }
                Layout::ReedSolomon { .. } => BTreeSet::new(),
                Layout::Mirror { .. } | Layout::Raid10 { .. } => (0..geometry.data_chunks())
                    .filter(|c| {
                        locations
                            .iter()
                            .filter(|l| l.data_chunk == Some(*c))
                            .all(|l| victims.contains_key(&l.device))
                    })
                    .collect(),
            };
            let beyond_repair = match geometry.layout {
                Layout::ReedSolomon { .. } => on_victims.len() > parity,
                _ => !destroyed.is_empty(),
            };
            if !beyond_repair {
                continue;
            }
            for location in on_victims {
                let junk = random_bytes(rng, geometry.chunk_bytes as usize);
                self.disks[victims[&location.device]]
                    .mem
                    .poke(location.offset, &junk);
            }
            lost.insert(s, destroyed);
        }
        Ok(lost)
    }

    /// A scrub after localized damage lists exactly the `lost` stripes (less any a misdirected
    /// write of zeros made whole again, which it removes from `lost`), merged, naming the
    /// damaged devices, and its tallies add up.
    fn scrub_after_damage(
        &mut self,
        lost: &mut BTreeMap<u64, BTreeSet<usize>>,
        victims: &BTreeMap<usize, usize>,
        stripe_bytes: u64,
    ) -> Check {
        let options = ScrubOptions {
            checkpoint_interval: Some(std::time::Duration::ZERO),
            ..ScrubOptions::default()
        };
        let within = self.within_tolerance();
        match self.pool()?.scrub_with(&options, |_| {}) {
            Ok(report) => {
                self.stats.scrub_bad_shards += report.bad_shards;
                if within {
                    let got: Vec<(u64, u64)> = report
                        .damaged
                        .iter()
                        .map(|r| (r.volume_offset, r.length))
                        .collect();
                    // A stripe a misdirected write of zeros made whole again is no longer lost.
                    let mut revived = Vec::new();
                    for s in lost.keys() {
                        let start = s * stripe_bytes;
                        if !got.iter().any(|(o, l)| *o <= start && start < o + l) {
                            let mut buf = vec![0u8; stripe_bytes as usize];
                            if self.pool()?.read_at(start, &mut buf).is_ok()
                                && buf == self.model.latest.read(start, buf.len())
                            {
                                revived.push(*s);
                            }
                        }
                    }
                    for s in revived {
                        lost.remove(&s);
                    }
                    let expected = merged_ranges(lost.keys().copied(), stripe_bytes);
                    if got != expected || report.unrepairable_stripes != lost.len() as u64 {
                        return Err(format!(
                            "scrub after localized damage: damaged ranges {got:?} ({} stripes), the model lost {expected:?} ({} stripes)",
                            report.unrepairable_stripes,
                            lost.len()
                        ));
                    }
                    let status = self.pool()?.status();
                    let named: BTreeSet<String> = self
                        .damaged_positions(&status)
                        .iter()
                        .chain(victims.keys())
                        .filter_map(|p| {
                            status
                                .devices
                                .iter()
                                .find(|d| d.index == Some(*p) && d.replacing.is_none())
                                .map(|d| d.path.clone())
                        })
                        .collect();
                    for range in &report.damaged {
                        if range.devices.is_empty()
                            || range
                                .devices
                                .iter()
                                .any(|d| !named.contains(d.trim_end_matches(" (out of service)")))
                        {
                            return Err(format!(
                                "scrub range {range:?} names no device, or one not damaged ({named:?})"
                            ));
                        }
                    }
                }
                for device in &report.devices {
                    let c = &device.counters;
                    if !c.errors_accounted() {
                        return Err(format!(
                            "scrub tallies do not add up for {}: {c:?}",
                            device.path
                        ));
                    }
                }
            }
            Err(err) if within => {
                return Err(format!("scrub after localized damage failed: {err}"))
            }
            Err(_) => {}
        }
        Ok(())
    }

    pub(super) fn replace_healthy(
        &mut self,
        position: u8,
        cut_after: Option<u32>,
        seed: u64,
    ) -> Check {
        if self.pool.is_none() || !self.within_tolerance() {
            return self.skip();
        }
        let status = self.pool()?.status();
        if status.devices.iter().any(|d| d.replacing.is_some()) {
            return self.skip();
        }
        let position = usize::from(position) % self.config.devices;
        if self.damaged_positions(&status).contains(&position) {
            return self.skip();
        }
        let Some(member) = status
            .devices
            .iter()
            .find(|d| d.index == Some(position) && d.replacing.is_none())
        else {
            return Err(format!("no member at position {position}"));
        };
        let old = member.path.clone();
        let mut rng = rng(seed);
        self.flush()?;
        self.fresh_made += 1;
        let handle = self.new_disk_with(format!("n{}", self.fresh_made), true);
        let new = self.disks.len() - 1;
        if let Err(err) = self.pool()?.replace(&old, handle, false) {
            return Err(format!(
                "replacing healthy {old} with a fresh device failed within tolerance: {err}"
            ));
        }
        if let Some(cut) = cut_after {
            self.swap_in_cut.store(i64::from(cut), Ordering::SeqCst);
        }
        let within = self.within_tolerance();
        for _ in 0..10_000 {
            match self.pool()?.rebuild_step(false) {
                Ok(outcome) => {
                    self.stats.rebuilds_completed += outcome.completed.len() as u64;
                    let done = self.pool()?.status().devices.iter().any(|d| {
                        d.index == Some(position)
                            && d.replacing.is_none()
                            && d.path == self.disks[new].name
                    });
                    if done || outcome.running == 0 || self.countdown.load(Ordering::SeqCst) <= 0 {
                        break;
                    }
                }
                Err(err) if within && self.countdown.load(Ordering::SeqCst) > 0 => {
                    return Err(format!("rebuild of a healthy replace failed: {err}"))
                }
                Err(_) => break,
            }
        }
        let armed = self.swap_in_cut.swap(DISARMED, Ordering::SeqCst);
        if cut_after.is_some() && armed == DISARMED {
            *self
                .stats
                .faults
                .entry("swap-in-power-cut".into())
                .or_default() += 1;
        }
        // Right after the swap-in: a write and a flush (the power may fail in them), then one
        // more write that is never flushed.
        let stripe = self.pool()?.geometry().stripe_data_bytes();
        for flush in [true, false] {
            if self.countdown.load(Ordering::SeqCst) <= 0 {
                break;
            }
            let len = rng.gen_range(1..3 * stripe) as u32;
            let (offset, len) = self.clamp(rng.gen(), len);
            let data = random_bytes(&mut rng, len);
            let outcome = self.write(offset, &data);
            if self.countdown.load(Ordering::SeqCst) <= 0 {
                // The power died during it (a write may sync, or clean to make room): what
                // it answered does not count; the check is after the reopen (seed 1000487).
                break;
            }
            outcome?;
            if flush {
                let flushed = self.pool()?.flush().is_ok();
                if flushed && self.countdown.load(Ordering::SeqCst) > 0 {
                    self.model.flushed();
                }
            }
        }
        self.power_cut(seed);
        *self.stats.faults.entry("crash".into()).or_default() += 1;
        let mut candidates = self.open_candidates(Some(&status));
        if !self.disks[new].plan.lock().is_gone() {
            candidates.push(new);
        }
        self.open_with(candidates)?;
        self.check_after_crash()
            .map_err(|e| format!("power cut in a healthy replace's swap-in: {e}"))?;
        self.count("replace-healthy");
        if !CHECK_RECOVERED_MAP_SURVIVES_LOSSES {
            let stripe = self.pool()?.geometry().stripe_data_bytes();
            let len = rng.gen_range(1..stripe) as u32;
            let (offset, len) = self.clamp(rng.gen(), len);
            let data = random_bytes(&mut rng, len);
            self.write(offset, &data)?;
            self.flush()?;
        }
        self.check_losing_members(&mut rng)
            .map_err(|e| format!("after a power cut in a healthy replace's swap-in: {e}"))
    }

    /// Close the pool, open it read-only without `tolerance` members (the damaged ones and
    /// seeded others): every byte reads back exactly. Then reopen it as it was.
    fn check_losing_members(&mut self, rng: &mut rand_chacha::ChaCha8Rng) -> Check {
        self.check_losing_members_keeping(rng, None)
    }

    /// As [`World::check_losing_members`], never losing position `keep` (a member just
    /// resynced: the check is of what it holds). Nothing is checked when `keep` is damaged.
    pub(super) fn check_losing_members_keeping(
        &mut self,
        rng: &mut rand_chacha::ChaCha8Rng,
        keep: Option<usize>,
    ) -> Check {
        if self.pool.is_none() || !self.within_tolerance() {
            return Ok(());
        }
        if let Some(keep) = keep {
            let damaged = self.damaged_positions(&self.pool()?.status());
            if damaged.contains(&keep) || damaged.len() > self.tolerance {
                return Ok(());
            }
        }
        let status = self.close_pool()?;
        let mut lost = self.damaged_positions(&status);
        let mut others: Vec<usize> = (0..self.config.devices)
            .filter(|p| !lost.contains(p) && Some(*p) != keep)
            .collect();
        others.shuffle(rng);
        for p in others {
            if lost.len() >= self.tolerance {
                break;
            }
            lost.insert(p);
        }
        let left_out: BTreeSet<usize> = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none() && d.index.is_some_and(|p| lost.contains(&p)))
            .filter_map(|d| self.disk(&d.path))
            .collect();
        let candidates: Vec<usize> = self
            .open_candidates(Some(&status))
            .into_iter()
            .filter(|d| !left_out.contains(d))
            .collect();
        self.open_with_mode(candidates, true)?;
        self.verify(&format!("read-only without positions {lost:?}"))?;
        if let Some(pool) = self.pool.take() {
            let _ = pool.close();
        }
        self.count("lost-members-check");
        self.open(&status)
    }

    /// Another pool's member (the pool is made on first use).
    fn foreign_device(&mut self) -> std::result::Result<SharedDevice, String> {
        if self.foreign.is_empty() {
            let mems: Vec<Arc<MemDevice>> = (0..2)
                .map(|i| Arc::new(MemDevice::new(format!("f{i}"), self.config.device_bytes)))
                .collect();
            let handles: Vec<SharedDevice> =
                mems.iter().map(|m| Arc::clone(m) as SharedDevice).collect();
            let mut options = CreateOptions::new("mirror:2".parse().map_err(|e| format!("{e}"))?);
            options.chunk_bytes = self.config.chunk_bytes;
            options.format = World::format(self.config);
            let pool = Pool::create(handles, vec![], &options)
                .map_err(|e| format!("cannot make the foreign pool: {e}"))?;
            pool.close()
                .map_err(|e| format!("cannot close the foreign pool: {e}"))?;
            self.foreign = mems;
        }
        Ok(Arc::clone(&self.foreign[0]) as SharedDevice)
    }

    pub(super) fn admin_with_bad_device(&mut self, action: u8, kind: u8, position: u8) -> Check {
        if self.pool.is_none() {
            return self.skip();
        }
        let status = self.pool()?.status();
        let in_service = self.in_service(&status);
        let devices = self.config.devices;
        let position = usize::from(position) % devices;
        let mut small = None;
        let (device, label): (SharedDevice, &str) = match kind % 4 {
            0 => (self.foreign_device()?, "foreign"),
            1 => {
                let Some(spare) = status
                    .spares
                    .iter()
                    .find_map(|s| self.disk(&s.path).filter(|_| s.state == "AVAIL"))
                else {
                    return self.skip();
                };
                (Arc::clone(&self.disks[spare].handle), "spare")
            }
            2 => {
                let Some(disk) = in_service.get(&((position + 1) % devices)) else {
                    return self.skip();
                };
                (Arc::clone(&self.disks[*disk].handle), "active")
            }
            _ => {
                let mem = Arc::new(MemDevice::new("small", self.config.device_bytes / 2));
                small = Some(Arc::clone(&mem));
                (mem as SharedDevice, "too-small")
            }
        };
        let Some(member) = status
            .devices
            .iter()
            .find(|d| d.index == Some(position) && d.replacing.is_none())
        else {
            return Err(format!("no member at position {position}"));
        };
        // The member to bring back online: a faulted one if there is one (else an online one,
        // which `online` must refuse anyway).
        let faulted = status.devices.iter().find(|d| {
            d.state == "FAULTED"
                && d.replacing.is_none()
                && !status
                    .devices
                    .iter()
                    .any(|r| r.index == d.index && r.replacing.is_some())
        });
        let action = action % 3;
        if action == 0
            && faulted.is_some()
            && label != "too-small"
            && !CHECK_ONLINE_REFUSES_LABELLED
        {
            self.count("admin-online-relabel-unchecked");
            return Ok(());
        }
        let online_target = faulted.unwrap_or(member).path.clone();
        let given = device.name();
        let before = self.images();
        let pool = self.pool()?;
        let (name, result) = match action {
            0 => (
                "online",
                pool.online(&online_target, Arc::clone(&device), false),
            ),
            1 => (
                "replace",
                pool.replace(&member.path, Arc::clone(&device), false),
            ),
            _ => ("spare-add", pool.add_spare(Arc::clone(&device), false)),
        };
        if result.is_ok() {
            return Err(format!(
                "{name} accepted {given}, a {label} device it must refuse"
            ));
        }
        Self::same_images(&before, &self.images(), &format!("a refused {name}"))?;
        if let Some(small) = &small {
            if small.image().iter().any(|b| *b != 0) {
                return Err(format!("a refused {name} wrote to {given}"));
            }
        }
        self.count(&format!("refused-{name}-{label}"));
        Ok(())
    }

    pub(super) fn open_subset(&mut self, seed: u64) -> Check {
        if self.pool.is_none() || !self.within_tolerance() || self.any_unreachable() {
            return self.skip();
        }
        let mut rng = rng(seed);
        let status = self.close_pool()?;
        let full = self.open_candidates(Some(&status));
        let in_service = self.in_service(&status);
        let damaged = self.damaged_positions(&status);
        let rebuilding: BTreeSet<usize> = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_some())
            .filter_map(|d| d.index)
            .collect();
        // Members that may be left out: not being replaced; damaged positions cost nothing.
        let mut droppable: Vec<(usize, usize)> = in_service
            .iter()
            .map(|(p, d)| (*p, *d))
            .filter(|(p, _)| !rebuilding.contains(p))
            .collect();
        droppable.shuffle(&mut rng);
        let budget = self.tolerance.saturating_sub(damaged.len());
        let too_many = rng.gen_bool(0.2);
        let mut dropped: Vec<(usize, usize)> = Vec::new();
        let mut spent = 0;
        for (p, d) in droppable {
            let mut remaining: Vec<bool> = (0..self.config.devices)
                .map(|q| in_service.contains_key(&q))
                .collect();
            for (q, _) in &dropped {
                remaining[*q] = false;
            }
            let available = self.config.layout.available_with(&remaining);
            if !available {
                break;
            }
            if too_many {
                dropped.push((p, d));
                continue;
            }
            let cost = usize::from(!damaged.contains(&p));
            if spent + cost <= budget && rng.gen_bool(0.6) {
                spent += cost;
                dropped.push((p, d));
            }
        }
        let unavailable_without = |dropped: &[(usize, usize)]| {
            let mut remaining: Vec<bool> = (0..self.config.devices)
                .map(|q| in_service.contains_key(&q))
                .collect();
            for (q, _) in dropped {
                remaining[*q] = false;
            }
            !self.config.layout.available_with(&remaining)
        };
        let unavailable = unavailable_without(&dropped);
        if too_many && !unavailable {
            // Members being replaced cannot be left out: not enough to make it too few.
            dropped.clear();
        }
        let dropped_disks: BTreeSet<usize> = dropped.iter().map(|(_, d)| *d).collect();
        // Everything else the simulation holds: faulted, stale and former members, spares,
        // devices never labelled: a seeded half of them, in a seeded order.
        let mut given: Vec<usize> = full
            .iter()
            .copied()
            .filter(|d| !dropped_disks.contains(d))
            .collect();
        for d in 0..self.disks.len() {
            if !full.contains(&d)
                && !dropped_disks.contains(&d)
                && !self.disks[d].plan.lock().is_gone()
                && rng.gen_bool(0.5)
            {
                given.push(d);
            }
        }
        given.shuffle(&mut rng);
        if unavailable {
            return self.open_too_few(given, &dropped, &status);
        }
        // Devices that are not members at all are refused; anything this pool ever had is
        // either used or left out with a warning.
        let extras: BTreeSet<usize> = given
            .iter()
            .copied()
            .filter(|d| !full.contains(d))
            .collect();
        self.open_refusing(given, false, &extras).map_err(|e| {
            format!(
                "open with positions {:?} left out: {e}",
                dropped.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )
        })?;
        // The members left out are out of service now (missing at open: faulted, or away
        // when they were in service and the open was not forced, FORMAT.md V4.16): they count
        // as damaged.
        for (_, d) in &dropped {
            self.disks[*d].damaged = true;
        }
        let status = self.pool()?.status();
        for (p, d) in &dropped {
            let serving = status
                .devices
                .iter()
                .find(|m| m.index == Some(*p) && m.replacing.is_none());
            let out = |state: &str| matches!(state, "FAULTED" | "UNAVAILABLE");
            if serving.is_some_and(|m| !out(&m.state) && m.path == self.disks[*d].name) {
                return Err(format!(
                    "{} was left out of the open but is in service",
                    self.disks[*d].name
                ));
            }
        }
        self.count(if dropped.is_empty() {
            "open-shuffled"
        } else {
            "open-subset"
        });
        self.verify("after an open with a subset")
    }

    /// An open given too few members (`dropped` left out): refused with a clear error, without
    /// writing a byte; then the pool is opened again as it was (`status`).
    fn open_too_few(
        &mut self,
        given: Vec<usize>,
        dropped: &[(usize, usize)],
        status: &PoolStatus,
    ) -> Check {
        // Too few members: refused with a clear error, without writing a byte.
        let before = self.images();
        let mut refused = None;
        let mut candidates = given.clone();
        // Not forced: forcing is the operator saying the members given are current, which
        // may then (rightly) open stale members that were faulted while the others went on.
        for force in [false] {
            while !candidates.is_empty() {
                let handles: Vec<SharedDevice> = candidates
                    .iter()
                    .map(|d| Arc::clone(&self.disks[*d].handle))
                    .collect();
                match Pool::open(handles, &Self::open_options(self.config, force, false)) {
                    Ok(pool) => {
                        pool.simulate_power_loss();
                        return Err(format!(
                            "opened with positions {:?} left out although the layout needs more",
                            dropped.iter().map(|(p, _)| p).collect::<Vec<_>>()
                        ));
                    }
                    Err(Error::NotAMember { device, .. }) => match self.disk(&device) {
                        Some(d) if candidates.contains(&d) => {
                            candidates.retain(|c| *c != d);
                        }
                        _ => return Err(format!("open refused {device}, not given")),
                    },
                    Err(err) => {
                        refused = Some(err);
                        break;
                    }
                }
            }
        }
        match refused {
            Some(
                Error::PoolUnavailable { .. }
                | Error::CannotProveCurrent { .. }
                | Error::CorruptMetadata { .. }
                | Error::SplitBrain { .. },
            ) => {}
            Some(err) => {
                return Err(format!(
                    "an open with too few members failed with an unclear error: {err}"
                ))
            }
            None => {}
        }
        Self::same_images(&before, &self.images(), "a refused open")?;
        self.count("open-subset-refused");
        self.open(status)?;
        self.verify("after a refused open")
    }

    pub(super) fn read_only_look(&mut self, seed: u64) -> Check {
        if self.pool.is_none() || self.any_unreachable() {
            return self.skip();
        }
        let mut rng = rng(seed);
        let status = self.close_pool()?;
        let before = self.images();
        let mut candidates = self.open_candidates(Some(&status));
        candidates.shuffle(&mut rng);
        self.open_with_mode(candidates, true)?;
        let within = self.within_tolerance();
        self.verify("read-only")?;
        let pool = self.pool()?;
        let _ = pool.status();
        let _ = crate::endpoint::metrics_text(pool);
        match pool.write_at(0, &[1u8; 512]) {
            Err(Error::ReadOnly { .. }) => {}
            other => return Err(format!("a write to a read-only open gave {other:?}")),
        }
        let options = ScrubOptions {
            check_only: true,
            checkpoint_interval: Some(std::time::Duration::ZERO),
            ..ScrubOptions::default()
        };
        match pool.scrub_with(&options, |_| {}) {
            Ok(report) if within && report.unrepairable_stripes > 0 => {
                return Err(format!(
                    "read-only scrub found {} unrepairable stripes within tolerance",
                    report.unrepairable_stripes
                ))
            }
            Ok(_) => {}
            Err(err) if within => return Err(format!("read-only check-only scrub failed: {err}")),
            Err(_) => {}
        }
        if let Some(pool) = self.pool.take() {
            if let Err(err) = pool.close() {
                if within {
                    return Err(format!("closing a read-only open failed: {err}"));
                }
            }
        }
        Self::same_images(&before, &self.images(), "a read-only open")?;
        self.count("read-only-look");
        self.open(&status)?;
        self.verify("after a read-only look")
    }
}
