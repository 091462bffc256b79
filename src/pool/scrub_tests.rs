//! Scrub tests that reach into the pool (its map) to forge damage the scrub must find: a
//! parity shard or copy that matches its checksum but disagrees with the data; and (format
//! version 4) to forge a recorded checkpoint of another timeline.

#[cfg(test)]
mod tests {
    use crate::codec::block_checksum;
    use crate::testing::{mem_devices, shared};
    use crate::types::{ShardIndex, SlotId};
    use crate::{CreateOptions, Pool};

    /// A parity shard or second copy that matches its checksum but disagrees with the data (as
    /// if the encoder had been wrong when it was written) is caught by the consistency check and the
    /// stripe is rewritten from its verified data.
    fn inconsistent_stripe_is_found_and_rewritten(layout: &str, devices: usize, shard: usize) {
        let mems = mem_devices(devices, 4 << 20);
        let mut options = CreateOptions::new(layout.parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        let stripe_bytes = pool.geometry().stripe_data_bytes() as usize;
        let data: Vec<u8> = (0..stripe_bytes * 3).map(|i| (i * 7 % 251) as u8).collect();
        pool.write_at(0, &data).unwrap();
        pool.flush().unwrap();
        // Stripe 1: replace one shard with other bytes *and* make the map's checksum agree
        // (a 4 KiB chunk is one checksum block, so the shard's checksum is `crcs[shard]`).
        let location = pool.shard_locations(crate::types::StripeId(1))[shard];
        let forged = vec![0x5a; 4096];
        mems[location.device].poke(location.offset, &forged);
        {
            let mut state = pool.inner.map.lock();
            let mut entry = state.map.get(crate::types::StripeId(1));
            let slot: SlotId = entry.slot.unwrap();
            entry.crcs[shard] =
                block_checksum(slot, ShardIndex(shard), 0, entry.generation, &forged);
            state.map.set(crate::types::StripeId(1), &entry);
        }
        let report = pool.scrub().unwrap();
        assert_eq!(report.inconsistent_stripes, 1, "{layout}: {report:?}");
        assert_eq!(
            report.bad_shards, 0,
            "{layout}: every chunk matched its checksum"
        );
        assert!(report.found_damage());
        let again = pool.scrub().unwrap();
        assert!(!again.found_damage(), "{layout}: rewritten: {again:?}");
        let mut back = vec![0u8; data.len()];
        pool.read_at(0, &mut back).unwrap();
        assert_eq!(back, data, "{layout}: data unchanged by the rewrite");
    }

    #[test]
    fn inconsistent_parity_is_found_and_the_stripe_rewritten() {
        inconsistent_stripe_is_found_and_rewritten("rs:4+2", 6, 5);
    }

    #[test]
    fn disagreeing_mirror_copies_are_found_and_the_stripe_rewritten() {
        inconsistent_stripe_is_found_and_rewritten("mirror:2", 2, 1);
    }
}

#[cfg(test)]
mod no_free_slot_tests {
    use crate::codec::block_checksum;
    use crate::testing::{mem_devices, shared};
    use crate::types::ShardIndex;
    use crate::{CreateOptions, Pool};

    /// With every free slot taken, the rewrite of an inconsistent stripe commits to free some;
    /// when none come free it gives up with a log line instead of spinning, and the stripe is
    /// still reported.
    #[test]
    fn an_inconsistent_stripe_with_no_free_slot_is_reported_not_spun_on() {
        let mems = mem_devices(6, 4 << 20);
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &vec![0x11; 3 * 16384]).unwrap();
        pool.flush().unwrap();
        let location = pool.shard_locations(crate::types::StripeId(1))[5];
        let forged = vec![0x5a; 4096];
        mems[location.device].poke(location.offset, &forged);
        let taken: Vec<u64> = {
            let mut state = pool.inner.map.lock();
            let mut entry = state.map.get(crate::types::StripeId(1));
            entry.crcs[5] = block_checksum(
                entry.slot.unwrap(),
                ShardIndex(5),
                0,
                entry.generation,
                &forged,
            );
            state.map.set(crate::types::StripeId(1), &entry);
            std::mem::take(&mut state.free)
        };
        let report = pool.scrub().unwrap();
        assert_eq!(report.inconsistent_stripes, 1, "{report:?}");
        // Give the slots back: the next scrub rewrites it.
        pool.inner.map.lock().free = taken;
        assert_eq!(pool.scrub().unwrap().inconsistent_stripes, 1);
        assert!(!pool.scrub().unwrap().found_damage());
    }
}

#[cfg(test)]
mod v4_tests {
    use crate::testing::{mem_devices, shared};
    use crate::{CreateOptions, Pool};

    /// A recorded pass over segments resumes only on the map's timeline: one recorded on
    /// another timeline (the map rewound since) is set aside and a new pass starts, with a
    /// fresh tally; one on the same timeline resumes at its cursor with its tally.
    #[test]
    fn a_v4_scrub_checkpoint_of_another_timeline_starts_a_new_pass() {
        use crate::format::{ScrubCheckpoint, ScrubTally, SegmentCursor};
        use crate::pool::FormatVersion;
        use crate::ScrubOptions;
        let mems = mem_devices(6, 16 << 20);
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 16384;
        options.open.background_rebuild = false;
        options.format = FormatVersion::V4(crate::testing::small_v4());
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &vec![0x5a; 2 << 20]).unwrap();
        pool.flush().unwrap();
        let timeline = pool.inner.rows().unwrap().read_volume().map().timeline();
        let recorded = |timeline: u64| {
            let mut tally = ScrubTally::new(6);
            tally.devices[0].checksum_errors = 7;
            tally.devices[0].repaired = 7;
            ScrubCheckpoint {
                started_unix_secs: 1,
                repair: true,
                paused: false,
                next_slot: 0,
                scan_secs: 0,
                tally,
                segments: Some(SegmentCursor {
                    next_segment: 3,
                    timeline,
                }),
            }
        };
        let resume = ScrubOptions {
            resume: true,
            ..ScrubOptions::default()
        };
        pool.inner
            .members
            .update_scrub_record(|r| r.in_progress = Some(recorded(timeline + 1)));
        let fresh = pool.scrub_with(&resume, |_| {}).unwrap();
        assert_eq!(fresh.resumed_from_segment, Some(0), "{fresh:?}");
        assert_eq!(fresh.totals.checksum_errors, 0, "a fresh tally");
        pool.inner
            .members
            .update_scrub_record(|r| r.in_progress = Some(recorded(timeline)));
        let resumed = pool.scrub_with(&resume, |_| {}).unwrap();
        assert_eq!(resumed.resumed_from_segment, Some(3), "{resumed:?}");
        assert_eq!(resumed.totals.checksum_errors, 7, "the tally carried on");
        assert!(resumed.bytes_read_this_run < fresh.bytes_read_this_run);
    }
}
