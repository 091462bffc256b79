//! The map's side of a receive (FORMAT.md V4.10d): the receive record in tree 3 that makes a
//! receive all or nothing, its finish (the received recovery point, with the sender's guid),
//! and its abort (what the live map alone names counted off, the live root back to the head's).
//!
//! Owns: the receive record's life and the exact count-off of an abort. Does not own: the
//! stream (format::stream), its checks and the writes of its records (the pool's), the
//! refusal of other writes while a receive is unfinished (the volume's).

use super::{
    Error, MapStore, NewPoint, RecoveryRecord, Result, SharedDevice, Staged, Unique, FLAG_RECEIVED,
    NO_KEY,
};
use crate::format::v4::{check_recovery_name, BlockPointer, RecoveryKind, RECOVERY_RECORD_BYTES};

/// The recovery point a receive brings: what its stream says of it (and, while the receive
/// is unfinished, what its record in tree 3 says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingPoint {
    /// The name of the recovery point it creates.
    pub name: String,
    /// Its guid (the sender's).
    pub guid: u64,
    /// The guid of its base (0: a full stream into an empty volume).
    pub base_guid: u64,
    /// Its created time (the sender's), seconds since the Unix epoch.
    pub created: u64,
}

/// What the sync did to the receive record: the record after it, and whether the live map
/// went back to its head (an abort).
pub(super) struct ReceiveStep {
    pub(super) after: Option<(u64, RecoveryRecord)>,
    pub(super) discarded: bool,
}

impl MapStore {
    /// The unfinished receive, if there is one.
    #[must_use]
    pub fn unfinished_receive(&self) -> Option<IncomingPoint> {
        self.receiving.as_ref().map(|(_, r)| IncomingPoint {
            name: r.name.clone(),
            guid: r.guid,
            base_guid: r.parent_guid,
            created: r.created,
        })
    }

    /// Refuse `operation` while a receive is unfinished.
    pub(super) fn not_receiving(&self, operation: &str) -> Result<()> {
        match &self.receiving {
            Some((_, r)) => Err(Error::ReceiveUnfinished {
                operation: operation.to_string(),
                name: r.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Take up `receiving` as the unfinished receive (or none), with the map its reads see.
    pub(super) fn set_receiving(&mut self, receiving: Option<(u64, RecoveryRecord)>) -> Result<()> {
        self.receive_base = match &receiving {
            Some((_, record)) => match self.points.get(&record.parent) {
                Some(base) => Some(Some(super::RecoveryPointMap {
                    tree: self.point_tree(base)?,
                })),
                None if record.parent == NO_KEY => Some(None),
                None => {
                    return Err(Error::corrupt_metadata(format!(
                        "the unfinished receive's base (tree-3 key {}) is gone",
                        record.parent
                    )))
                }
            },
            None => None,
        };
        self.receiving = receiving;
        Ok(())
    }

    /// The pointer of logical block `key` that readers see: the live map's, or, while a
    /// receive is unfinished, its base's (a hole for a full stream). FORMAT.md V4.10d.
    ///
    /// # Errors
    /// As [`MapStore::get`].
    pub fn visible(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        match &self.receive_base {
            _ if self.planted_holds.receive_reads_live => self.get(devices, key),
            None => self.get(devices, key),
            Some(Some(base)) => base.get(devices, key),
            Some(None) => Ok(BlockPointer::hole(0)),
        }
    }

    /// A key at or after `from` that no key reading data comes before: the first whose
    /// [`MapStore::visible`] pointer may not read zeros (`None`: every key from `from` on
    /// reads zeros). Never past such a key; it may itself read zeros (a trim in the log's
    /// overlay over a written key), so the caller asks [`MapStore::visible`] and goes on
    /// from the next key. Unwritten map pages are skipped without a read.
    ///
    /// # Errors
    /// As [`MapStore::visible`].
    pub fn next_visible(&self, devices: &[Option<SharedDevice>], from: u64) -> Result<Option<u64>> {
        let (tree, overlay) = match &self.receive_base {
            _ if self.planted_holds.receive_reads_live => (&self.map, true),
            None => (&self.map, true),
            Some(Some(base)) => (&base.tree, false),
            Some(None) => return Ok(None),
        };
        let from = if self.planted_holds.allocation_hint_late {
            from.saturating_add(1)
        } else {
            from
        };
        let in_tree = tree.next_present(devices, from)?;
        let in_overlay = if overlay {
            self.overlay
                .range(from..)
                .find(|(_, (pointer, _))| !pointer.reads_zeros())
                .map(|(key, _)| *key)
        } else {
            None
        };
        Ok(match (in_tree, in_overlay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The guid of the live line's head (0: no head).
    #[must_use]
    pub fn head_guid(&self) -> u64 {
        self.points.get(&self.head.0).map_or(0, |p| p.guid)
    }

    /// Whether the live map is exactly its head's tree (an empty map when there is no head),
    /// with nothing changed since: no dirty page, no change in the log's overlay or pending.
    /// Decided from memory; writes nothing.
    #[must_use]
    pub fn live_is_head(&self) -> bool {
        let clean = !self.map.has_dirty()
            && self.overlay.is_empty()
            && self.pending.is_empty()
            && self.rows.is_empty()
            && !self.segments.any_held();
        clean
            && match self.points.get(&self.head.0) {
                Some(head) => head.root.encode() == self.map.root().encode(),
                None => self.map.root().address().is_none(),
            }
    }

    /// Begin receiving `incoming` on the live line's head, whose guid must be its base's (0:
    /// no head, and nothing written), with the live map unchanged since it: one sync records
    /// the receive in tree 3. The live map may then be written by the receive alone.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when the name or guid is taken, the base is not the head, the
    /// live volume changed since it, or a receive is unfinished; what a sync returns.
    pub fn begin_receive(
        &mut self,
        devices: &[Option<SharedDevice>],
        incoming: &IncomingPoint,
    ) -> Result<()> {
        self.usable()?;
        self.check_receivable(incoming)?;
        // A receive's base is only ever a whole tree (FORMAT.md V4.10e).
        self.finish_deletes(devices)?;
        self.check_receivable(incoming)?;
        self.free_key(&incoming.name)?;
        let record = RecoveryRecord {
            kind: RecoveryKind::Receive,
            flags: 0,
            holds: 0,
            guid: incoming.guid,
            sequence: self.head.1,
            txg: 0,
            created: incoming.created,
            parent: self.head.0,
            parent_guid: self.head_guid(),
            root: BlockPointer::hole(0),
            depth: 0,
            counters: [0; 3],
            deleting: None,
            name: incoming.name.clone(),
        };
        self.sync_staged(
            devices,
            Staged {
                receiving: Some(record),
                ..Staged::default()
            },
        )?;
        Ok(())
    }

    /// Whether a receive of `incoming` may begin: the checks of FORMAT.md V4.10d, from memory
    /// (nothing is read or written).
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] saying which does not hold.
    pub fn check_receivable(&self, incoming: &IncomingPoint) -> Result<()> {
        let IncomingPoint {
            name,
            guid,
            base_guid,
            ..
        } = incoming;
        let (guid, base_guid) = (*guid, *base_guid);
        let refuse = |reason: String| {
            Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason,
            })
        };
        check_recovery_name(name).map_err(|reason| Error::RecoveryPoint {
            name: name.to_string(),
            reason,
        })?;
        if let Some((_, r)) = &self.receiving {
            return refuse(format!(
                "a receive of {:?} is unfinished: finish it with its own stream, or abort it",
                r.name
            ));
        }
        if guid == 0 {
            return refuse("a stream with guid 0".into());
        }
        if let Some(p) = self.points.values().find(|p| p.guid == guid) {
            return refuse(format!(
                "this pool already has it (recovery point {:?} has guid {guid:#x})",
                p.name
            ));
        }
        if self.points.values().any(|p| p.name == *name) {
            return refuse("the name is taken".into());
        }
        if let Some(p) = self
            .points
            .values()
            .find(|p| p.deleting.is_some() && p.guid == base_guid)
        {
            return refuse(format!(
                "recovery point {:?} is being deleted: a receive waits until it is gone \
                 (`snapshot reclaim`)",
                p.name
            ));
        }
        let head = self.head_guid();
        if base_guid == 0 {
            if !self.points.is_empty() || !self.live_is_head() {
                return refuse(
                    "a full stream goes into a volume with nothing written and no recovery \
                     point; this one has some (send an incremental stream from a recovery \
                     point both have)"
                        .into(),
                );
            }
        } else if head != base_guid {
            let have = self
                .points
                .values()
                .find(|p| p.guid == base_guid)
                .map(|p| p.name.clone());
            return refuse(match have {
                Some(base) => format!(
                    "the stream's base is recovery point {base:?}, which is not the newest on \
                     the live line: roll back to it first (`rollback --to {base}`)"
                ),
                None => format!(
                    "this pool lacks the stream's base (guid {base_guid:#x}): send a full \
                     stream, or one from a recovery point it has"
                ),
            });
        } else if !self.live_is_head() {
            return refuse(
                "the volume changed since the stream's base: roll back to it first (the \
                 changes are kept as a recovery point)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Finish the unfinished receive: one sync (after the writes are committed) records the
    /// received recovery point (the sender's guid and created, flagged received) as the live
    /// line's head and frees the receive record. Its uberblock is the commit point.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when no receive is unfinished; what a sync returns.
    pub fn finish_receive(
        &mut self,
        devices: &[Option<SharedDevice>],
    ) -> Result<super::RecoveryPoint> {
        self.usable()?;
        let Some((_, record)) = self.receiving.clone() else {
            return Err(Error::RecoveryPoint {
                name: String::new(),
                reason: "no receive is unfinished".into(),
            });
        };
        self.sync_staged(
            devices,
            Staged {
                creating: Some(NewPoint {
                    name: record.name.clone(),
                    created: record.created,
                    flags: FLAG_RECEIVED,
                    guid: Some(record.guid),
                }),
                ending_receive: true,
                ..Staged::default()
            },
        )?;
        let key = self.point_key(&record.name)?;
        Ok(super::RecoveryPoint::of(key, &self.points[&key]))
    }

    /// Abort the unfinished receive (FORMAT.md V4.10d): a sync (the live map durable), a walk
    /// for the pages and blocks the live map names born after `S_head` (no other tree names
    /// them), then one unlogged sync that counts those off, puts the head's root back as the
    /// live map's (an empty map when there is no head) and frees the receive record. Returns
    /// what was freed.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when no receive is unfinished; what a sync returns.
    pub fn abort_receive(&mut self, devices: &[Option<SharedDevice>]) -> Result<super::PointUsage> {
        self.usable()?;
        if self.receiving.is_none() {
            return Err(Error::RecoveryPoint {
                name: String::new(),
                reason: "no receive is unfinished".into(),
            });
        }
        self.sync(devices)?;
        let unique = self.born_after_head(devices)?;
        let usage = unique.usage();
        self.sync_staged(
            devices,
            Staged {
                discarding: Some(unique),
                ending_receive: true,
                ..Staged::default()
            },
        )?;
        Ok(usage)
    }

    /// The pages and blocks of the durable live map born after `S_head`, per segment: what
    /// the live map alone names. A subtree whose page is born at or before `S_head` is the
    /// head's (or an older recovery point's) and is not descended into.
    fn born_after_head(&self, devices: &[Option<SharedDevice>]) -> Result<Unique> {
        let s_head = self.head.1;
        let live = self.durable_map()?;
        let shape = self.segments.shape();
        let mut unique = Unique::default();
        let mut stack = vec![(live.depth(), 0u64, live.root())];
        while let Some((level, first, pointer)) = stack.pop() {
            let Some(mpn) = pointer.address() else {
                continue;
            };
            if pointer.birth() <= s_head {
                continue;
            }
            *unique.pages.entry(shape.of_page(mpn)).or_insert(0) += 1;
            let Some(entries) = live.pointers_at(devices, level, first, &pointer)? else {
                continue;
            };
            for (i, entry) in entries.iter().enumerate() {
                if level == 1 {
                    if let Some(pbn) = entry.address().filter(|_| entry.birth() > s_head) {
                        *unique.blocks.entry(shape.of_block(pbn)).or_insert(0) += 1;
                    }
                } else {
                    stack.push((
                        level - 1,
                        first + i as u64 * live.span_of(level - 1),
                        *entry,
                    ));
                }
            }
        }
        Ok(unique)
    }

    /// The receive part of a sync: write the staged receive record, or free the unfinished
    /// one (and count off what an abort discards). Returns what the map takes up once the
    /// uberblock is durable.
    pub(super) fn stage_receive(
        &mut self,
        devices: &[Option<SharedDevice>],
    ) -> Result<ReceiveStep> {
        let mut after = self.receiving.clone();
        let mut writes = Vec::new();
        // `after` is what the sync leaves; a finish's new recovery point may reuse the key.
        if let Some(record) = self.staged.receiving.take() {
            let key = (1..self.points_tree.keys())
                .find(|k| !self.points.contains_key(k))
                .ok_or_else(|| Error::RecoveryPoint {
                    name: record.name.clone(),
                    reason: "no tree-3 key is free".into(),
                })?;
            writes.push((key, record.encode()));
            after = Some((key, record));
        }
        if std::mem::take(&mut self.staged.ending_receive) {
            if let Some((key, _)) = after.take() {
                writes.push((key, [0u8; RECOVERY_RECORD_BYTES]));
            }
        }
        let discarded = match self.staged.discarding.take() {
            Some(unique) => {
                if !self.planted_holds.abort_keeps_blocks {
                    self.count_off(&unique);
                }
                true
            }
            None => false,
        };
        self.set_point_records(devices, &writes)?;
        Ok(ReceiveStep { after, discarded })
    }
}
