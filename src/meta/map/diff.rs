//! What changed between two recovery points (FORMAT.md V4.10d): their map trees walked
//! together, position by position, in key order; subtrees whose pointers are equal (the same
//! page, shared by copy-on-write) are skipped, so the walk reads what differs and no more.
//!
//! Owns: the walk and the runs it reports. Does not own: the blocks' bytes (the volume
//! reads them for a send), the trees (the map's).

use super::{Error, MapStore, RadixTree, Result, SharedDevice};
use crate::format::v4::BlockPointer;

/// A run of consecutive logical blocks whose content may differ between the two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffRun {
    /// The first logical block (4 KiB each).
    pub first: u64,
    /// How many blocks.
    pub blocks: u64,
    /// The run reads zeros in the newer tree (`--to`): it was trimmed, or never written.
    pub zeros: bool,
}

/// Merges changed blocks, met in key order, into runs.
struct Runs<'a> {
    current: Option<DiffRun>,
    visit: &'a mut dyn FnMut(DiffRun) -> Result<()>,
}

impl Runs<'_> {
    fn block(&mut self, key: u64, zeros: bool) -> Result<()> {
        if let Some(run) = &mut self.current {
            if run.first + run.blocks == key && run.zeros == zeros {
                run.blocks += 1;
                return Ok(());
            }
        }
        self.flush()?;
        self.current = Some(DiffRun {
            first: key,
            blocks: 1,
            zeros,
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match self.current.take() {
            Some(run) => (self.visit)(run),
            None => Ok(()),
        }
    }
}

/// Whether two block pointers give the same bytes without reading them: the same block, or
/// both zeros (a hole and a trimmed block read alike).
fn same_content(a: &BlockPointer, b: &BlockPointer) -> bool {
    a.encode() == b.encode() || (a.reads_zeros() && b.reads_zeros())
}

impl MapStore {
    /// Call `visit` with every run of blocks whose content may differ between recovery point
    /// `from` (`None`: an empty volume) and recovery point `to`, in ascending order. A block
    /// rewritten with the same bytes is reported (pointers are compared, not bytes). Reads
    /// the pages that differ, through caches of the walk's own; writes nothing.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when either does not exist; a page that cannot be read; what
    /// `visit` returns (the walk stops there).
    pub fn diff_recovery_points(
        &self,
        devices: &[Option<SharedDevice>],
        from: Option<&str>,
        to: &str,
        visit: &mut dyn FnMut(DiffRun) -> Result<()>,
    ) -> Result<()> {
        let newer = self.point_tree(&self.points[&self.point_key(to)?])?;
        let older = match from {
            Some(name) => Some(self.point_tree(&self.points[&self.point_key(name)?])?),
            None => None,
        };
        if let Some(older) = &older {
            if older.depth() != newer.depth() {
                return Err(Error::corrupt_metadata(format!(
                    "recovery points of maps of depths {} and {}",
                    older.depth(),
                    newer.depth()
                )));
            }
        }
        let mut runs = Runs {
            current: None,
            visit,
        };
        diff_trees(devices, older.as_ref(), &newer, &mut runs)?;
        runs.flush()
    }
}

/// The walk: a stack of `(level, first key, older pointer, newer pointer)`, children pushed
/// in reverse so they come off in key order.
fn diff_trees(
    devices: &[Option<SharedDevice>],
    older: Option<&RadixTree>,
    newer: &RadixTree,
    runs: &mut Runs<'_>,
) -> Result<()> {
    let none = BlockPointer::hole(0);
    let root_of_older = older.map_or(none, RadixTree::root);
    let mut stack = vec![(newer.depth(), 0u64, root_of_older, newer.root())];
    while let Some((level, first, a, b)) = stack.pop() {
        if a.encode() == b.encode() || (a.address().is_none() && b.address().is_none()) {
            continue;
        }
        let entries = |tree: Option<&RadixTree>, pointer: &BlockPointer| match tree {
            Some(tree) if pointer.address().is_some() => {
                tree.pointers_at(devices, level, first, pointer)
            }
            _ => Ok(None),
        };
        let mine = entries(older, &a)?;
        let theirs = entries(Some(newer), &b)?;
        let count = mine
            .as_ref()
            .or(theirs.as_ref())
            .map_or(0, std::vec::Vec::len);
        let at = |list: &Option<Vec<BlockPointer>>, i: usize| list.as_ref().map_or(none, |l| l[i]);
        if level == 1 {
            for i in 0..count {
                let (x, y) = (at(&mine, i), at(&theirs, i));
                if !same_content(&x, &y) {
                    runs.block(first + i as u64, y.reads_zeros())?;
                }
            }
        } else {
            let span = newer.span_of(level - 1);
            for i in (0..count).rev() {
                stack.push((
                    level - 1,
                    first + i as u64 * span,
                    at(&mine, i),
                    at(&theirs, i),
                ));
            }
        }
    }
    Ok(())
}
