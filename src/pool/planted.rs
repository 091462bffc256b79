//! Bugs a test can plant in one pool (feature `testing`; re-exported as
//! `stripestore::testing::PlantedBugs`), so the simulation can prove it notices
//! (`tests/simulation_planted.rs`). They travel in [`crate::OpenOptions::planted`] and so belong
//! to one pool instance, never to the process. The whole module, and every place that reads a
//! switch, exists only with the `testing` feature: a default build of the library has no code
//! that can turn a protection off.

/// Protections a test may switch off in one pool. All off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Shard reads stop verifying checksums (read by the pool's shard read path).
    pub skip_checksum_verification: bool,
    /// A commit writes the map without first flushing the stripes it names (read by the
    /// commit path).
    pub skip_commit_data_flush: bool,
    /// Read and checksum errors past the threshold fault the device (the policy before the
    /// degraded state existed) instead of marking it degraded (read by the fault policy,
    /// `Members::record_error`).
    pub fault_on_data_errors: bool,
    /// A discard unmaps stripes in memory and releases their slots at the next commit, without
    /// recording the change in it (read by the discard path): after a crash or a reopen the
    /// map names the old slots again.
    pub skip_discard_log: bool,
    /// Format version 4: metadata pages are taken from the first copy a member returns,
    /// unchecked against the checksum their parent holds (read by the map's page store).
    pub skip_page_checksum_verification: bool,
    /// Format version 4: segments a tree sync frees are handed out again at once, before the
    /// new root is durable (read by the map's segment table), so a crash can leave the
    /// durable tree naming pages written over.
    pub release_before_root_durable: bool,
    /// Format version 4: a scrub pass in chunks checks and repairs the segments its walk
    /// found even when they were freed or taken again since (read by the volume's scrub), so
    /// it can write what the walk saw over what a segment holds now.
    pub scrub_without_skip: bool,
    /// Format version 4: a write encoded before the volume's lock leaves its rows' parity
    /// zero, with crcs that match the zeros (read by the volume's row encoder), so the rows
    /// read fine until a shard must be rebuilt from them.
    pub encode_without_parity: bool,
    /// Format version 4: a block the live tree drops is counted off whatever its birth
    /// (read by the map's usage accounting), so blocks recovery points still name are freed
    /// and written over (docs/FORMAT.md V4.10a, the hold rule).
    pub drop_held_block: bool,
    /// Format version 4: an aborted receive puts the volume back but counts off nothing it
    /// wrote (a leak; docs/FORMAT.md V4.10d).
    pub abort_keeps_blocks: bool,
    /// Format version 4: while a receive is unfinished, reads see what it wrote so far, not
    /// the volume as it was (docs/FORMAT.md V4.10d).
    pub receive_reads_live: bool,
    /// Format version 4: the hold rule ignores the cursor of a delete running on the live
    /// line's head, so blocks the live volume drops where the delete has passed stay held
    /// (a leak; docs/FORMAT.md V4.10e).
    pub delete_cursor_ignored: bool,
    /// Automatic replacement takes the first usable spare whatever its failure domain (read
    /// by the spare assignment; docs/FORMAT.md V4.16), so a domain can end up holding more
    /// of a stripe than the layout tolerates.
    pub domains_ignored: bool,
    /// Format version 4: a member marked unavailable records its resync boundary one
    /// sequence late (read by the fault policy; docs/FORMAT.md V4.16 §6), so the rows of the
    /// first sequence of its outage are not copied back.
    pub resync_since_late: bool,
    /// Format version 4: reads never hedge (read by the volume's read path; docs/FORMAT.md
    /// V4.16 §7): a read whose shard sits on a slow member waits for it even when the rest
    /// of the row could answer.
    pub hedge_disabled: bool,
    /// Format version 4: the map's hint of the next written block starts one block late
    /// (read by `Pool::allocation`), so a written block right after an unwritten one is
    /// reported unwritten and a copy or `nbdcopy` skips it.
    pub allocation_hint_late: bool,
    /// Format version 4: a cached sector of a map leaf is used without checking that the
    /// leaf's parent still names the version it was read from (docs/FORMAT.md V4.17), so a
    /// read can see a pointer the map replaced.
    pub stale_sectors: bool,
    /// Format version 4: an open that finds the pool unavailable puts members recorded away
    /// back in service without checking that no commit followed their leaving (read by the
    /// open; docs/FORMAT.md V4.16 §3, "Away members that hold every commit"), so a member
    /// behind serves rows it never received.
    pub revive_behind: bool,
}

impl PlantedBugs {
    /// True when any protection is switched off.
    #[must_use]
    pub fn any(&self) -> bool {
        self.skip_checksum_verification
            || self.skip_commit_data_flush
            || self.fault_on_data_errors
            || self.skip_discard_log
            || self.skip_page_checksum_verification
            || self.release_before_root_durable
            || self.scrub_without_skip
            || self.encode_without_parity
            || self.drop_held_block
            || self.abort_keeps_blocks
            || self.receive_reads_live
            || self.delete_cursor_ignored
            || self.domains_ignored
            || self.resync_since_late
            || self.hedge_disabled
            || self.allocation_hint_late
            || self.stale_sectors
            || self.revive_behind
    }
}
