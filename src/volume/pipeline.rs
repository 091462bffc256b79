//! The writer's pipeline (docs/FORMAT.md V4.6, "Several groups on the devices"): a writer
//! holding the volume's exclusive lock keeps up to [`PIPELINE_UNITS`] units of encoded rows on
//! the devices at once and lands them in the order it placed them, so the devices are not idle
//! while earlier rows are installed and their writers encode the next ones.
//!
//! Owns: the order of placing, writing and landing the units of the groups it is handed, the
//! drain points (a group that cannot be pipelined, making room with the cleaner, the end), and
//! giving up the units placed after one that failed to land (their groups are written again
//! one write at a time). Does not own: placing, writing and landing rows (`mod.rs`), making
//! room (`clean.rs`), the queue of writes and who leads (the pool's `rows.rs`).
//!
//! Nothing but this writer runs while units are in flight: the caller holds the volume
//! exclusively (`&mut Volume`) from the first placement to the last landing. A unit's I/O runs
//! on a thread of its own when a member is on io_uring (so that its requests are on the
//! devices while this thread lands earlier units); on other devices (memory, the simulation's
//! faulty devices) it runs at once on this thread, which keeps the simulation deterministic
//! while it still places units before earlier ones land.
//! On io_uring members a unit too small for a thread is written on this thread too, and it is
//! landed before the next group is taken: a finished unit at the front is never kept waiting
//! for later placements (its writers are told at once).

use super::{
    distinct_keys, encoded_only, EncodedWrite, GroupWrite, PlacedUnit, UnitBatch, Volume,
    WriteFailure, BLOCK_BYTES,
};
use crate::device::SharedDevice;
use crate::error::Result;
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

/// Least bytes of requests a unit needs for its own thread: a smaller one is written at once on
/// the leader's thread (a thread and its ring cost tens of microseconds to make: measured,
/// 4 KiB mirror writes over NBD fell from 31k to 14k IOPS with a thread per unit).
const THREAD_BYTES_MIN: usize = 256 << 10;

/// Most units on the devices at once.
pub const PIPELINE_UNITS: usize = 4;

/// A group of writes a pipelined writer carries; shared, so that its buffers outlive the
/// requests that write from them.
pub trait WriteGroup: Send + Sync {
    /// Its writes, in order (where two write one block, the later wins).
    fn writes(&self) -> Vec<GroupWrite<'_>>;
}

/// A unit's requests: on a thread, or already done.
enum Io<'scope> {
    Running(ScopedJoinHandle<'scope, Vec<WriteFailure>>),
    Done(Vec<WriteFailure>),
}

impl Io<'_> {
    /// Whether its requests are all done (waiting would not block).
    fn is_finished(&self) -> bool {
        match self {
            Io::Done(_) => true,
            Io::Running(handle) => handle.is_finished(),
        }
    }

    fn wait(self) -> Vec<WriteFailure> {
        match self {
            Io::Done(failures) => failures,
            Io::Running(handle) => match handle.join() {
                Ok(failures) => failures,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        }
    }
}

/// A unit on the devices.
struct Flight<'scope, G> {
    /// Which group (in the order taken) and the group itself.
    id: u64,
    group: Arc<G>,
    unit: PlacedUnit,
    io: Io<'scope>,
    /// The last unit of its group: its landing gives the group its outcome.
    last: bool,
}

/// The writer's state through one pipelined run.
struct Run<'scope, 'd, G, D> {
    /// The members as the owner sees them now (a member its fault policy took out of service
    /// meanwhile is absent: no later request or metadata write goes to it).
    members: &'d dyn Fn() -> Vec<Option<SharedDevice>>,
    /// What `members` gave last.
    devices: Arc<Vec<Option<SharedDevice>>>,
    flights: VecDeque<Flight<'scope, G>>,
    /// Put units' I/O on threads of their own.
    threaded: bool,
    next_id: u64,
    done: D,
}

impl<G, D> Run<'_, '_, G, D> {
    /// Ask the owner for the members again.
    fn refresh(&mut self) {
        self.devices = Arc::new((self.members)());
    }
}

/// What landing units did to the group being placed.
#[derive(PartialEq, Eq)]
enum Current {
    /// Untouched (or landed in part: its later units are still to come).
    Going,
    /// A failure gave it its outcome (written again write by write).
    Finished,
}

impl Volume {
    /// Write the groups `next` hands out, keeping up to [`PIPELINE_UNITS`] units of rows on
    /// the devices, each group's writers told by `done` (one outcome per write, in order) once
    /// every unit of the group has landed. `next(in_flight)` is asked for a group while there
    /// is room (`in_flight`: units are on the devices, so a smaller group is better), again
    /// after each landing and whenever this thread is unparked while it waits for the oldest
    /// unit (an owner unparks it when it queues a write); the run ends when it answers `None`
    /// with nothing in flight.
    ///
    /// A group of encoded writes, none writing a block twice, is pipelined; any other is
    /// written as [`Volume::write_writes`] does, after everything in flight has landed. When a
    /// group fails (a unit not landed, a placement refused), its writes and those of every
    /// group placed after it are written again one at a time, so that an error reaches only
    /// the write it belongs to.
    pub fn write_pipelined<G: WriteGroup>(
        &mut self,
        members: &dyn Fn() -> Vec<Option<SharedDevice>>,
        mut next: impl FnMut(bool) -> Option<Arc<G>>,
        done: impl FnMut(&Volume, &G, Vec<Result<()>>),
    ) {
        let devices = Arc::new(members());
        let threaded = devices
            .iter()
            .flatten()
            .any(|device| device.as_uring().is_some());
        std::thread::scope(|scope| {
            let mut run = Run {
                members,
                devices,
                flights: VecDeque::new(),
                threaded,
                next_id: 0,
                done,
            };
            loop {
                let mut idle = false;
                while run.flights.len() < PIPELINE_UNITS {
                    // On io_uring members a unit written on this thread (too small for one
                    // of its own) is done already: land it, telling its writers, before taking
                    // the next group, or they would wait for up to three more groups to be
                    // written after theirs. A unit on a thread of its own keeps the pipeline's
                    // order (the next is placed while it is on the devices). On other devices
                    // every unit is written here: the simulation keeps placing units before
                    // earlier ones land.
                    if run.threaded
                        && run
                            .flights
                            .front()
                            .is_some_and(|f| matches!(f.io, Io::Done(_)))
                    {
                        self.land_oldest(&mut run, None);
                        continue;
                    }
                    match next(!run.flights.is_empty()) {
                        Some(group) => self.take_group(scope, &mut run, group),
                        None => {
                            idle = true;
                            break;
                        }
                    }
                }
                if run.flights.is_empty() {
                    if idle {
                        break;
                    }
                    continue;
                }
                if idle && !run.flights.front().is_some_and(|f| f.io.is_finished()) {
                    // Nothing queued and the oldest unit still on the devices: wait for either
                    // (its thread and the owner's queue unpark this thread), so that a group
                    // queued meanwhile goes to the devices at once, not after that landing.
                    std::thread::park_timeout(std::time::Duration::from_millis(1));
                    continue;
                }
                self.land_oldest(&mut run, None);
            }
        });
    }

    /// Place and submit every unit of `group`, or write it the plain way (each placement and
    /// each plain write with the members as they are then).
    fn take_group<'scope, G: WriteGroup + 'scope, D: FnMut(&Volume, &G, Vec<Result<()>>)>(
        &mut self,
        scope: &'scope Scope<'scope, '_>,
        run: &mut Run<'scope, 'scope, G, D>,
        group: Arc<G>,
    ) {
        let id = run.next_id;
        run.next_id += 1;
        run.refresh();
        let batches = {
            let writes = group.writes();
            self.pipelinable(&run.devices, &writes)
                .map(|encoded| self.segment_batches(&encoded))
        };
        let Some(batches) = batches else {
            self.drain(run, None);
            run.refresh();
            let writes = group.writes();
            let outcomes = match self.write_writes(&run.devices, &writes) {
                Ok(()) => writes.iter().map(|_| Ok(())).collect(),
                Err(_) => self.write_each(run, &writes),
            };
            drop(writes);
            (run.done)(self, &group, outcomes);
            return;
        };
        let count = batches.len();
        for (b, batch) in batches.into_iter().enumerate() {
            if !self.room_is_plenty(2) {
                // The cleaner never runs with rows in flight.
                if self.drain(run, Some(id)) == Current::Finished {
                    return;
                }
                run.refresh();
                if self.make_room(&run.devices, 2).is_err() {
                    return self.fail_current(run, id, &group);
                }
            }
            let placed = {
                let writes = group.writes();
                let encoded = encoded_only(&writes).unwrap_or_default();
                let refs = batch_refs(&encoded, &batch);
                run.refresh();
                self.place_encoded(&run.devices, &refs)
            };
            let Ok(unit) = placed else {
                return self.fail_current(run, id, &group);
            };
            let io = unit_io(
                scope,
                Arc::clone(&run.devices),
                run.threaded,
                &group,
                batch,
                &unit,
            );
            run.flights.push_back(Flight {
                id,
                group: Arc::clone(&group),
                unit,
                io,
                last: b + 1 == count,
            });
            while run.flights.len() > PIPELINE_UNITS {
                if self.land_oldest(run, Some(id)) == Current::Finished {
                    return;
                }
            }
        }
    }

    /// The encoded writes of a group that may be pipelined: all encoded, in range, none
    /// writing a block twice, on a writable volume with enough members.
    fn pipelinable<'w>(
        &self,
        devices: &[Option<SharedDevice>],
        writes: &[GroupWrite<'w>],
    ) -> Option<Vec<&'w EncodedWrite>> {
        let fits = writes
            .iter()
            .all(|w| self.check_range(w.offset(), w.len() as u64).is_ok());
        if !fits
            || writes.iter().all(|w| w.len() == 0)
            || self.content_writable("write").is_err()
            || self.check_available(devices).is_err()
            || distinct_keys(writes).is_none()
        {
            return None;
        }
        encoded_only(writes)
    }

    /// Land the oldest unit in flight; if it fails, give up every unit placed after it and
    /// write their groups again write by write.
    fn land_oldest<G: WriteGroup, D: FnMut(&Volume, &G, Vec<Result<()>>)>(
        &mut self,
        run: &mut Run<'_, '_, G, D>,
        current: Option<u64>,
    ) -> Current {
        let Some(flight) = run.flights.pop_front() else {
            return Current::Going;
        };
        let failures = flight.io.wait();
        run.refresh();
        match self.land_unit(&run.devices, flight.unit, failures) {
            Ok(()) => {
                if flight.last {
                    let outcomes = flight.group.writes().iter().map(|_| Ok(())).collect();
                    (run.done)(self, &flight.group, outcomes);
                }
                Current::Going
            }
            Err(_) => {
                // Rows of the units after it may share its abandoned slot: none of them may
                // be noted. Their rows are left unreferenced, as a failed write's.
                let mut groups = vec![(flight.id, flight.group)];
                while let Some(later) = run.flights.pop_front() {
                    drop(later.io.wait());
                    later.unit.discard(&mut self.map);
                    if groups.last().is_none_or(|(id, _)| *id != later.id) {
                        groups.push((later.id, later.group));
                    }
                }
                self.map.abandon_open_slot();
                let mut finished = Current::Going;
                for (id, group) in groups {
                    if Some(id) == current {
                        finished = Current::Finished;
                    }
                    let writes = group.writes();
                    let outcomes = self.write_each(run, &writes);
                    drop(writes);
                    (run.done)(self, &group, outcomes);
                }
                finished
            }
        }
    }

    /// Land everything in flight.
    fn drain<G: WriteGroup, D: FnMut(&Volume, &G, Vec<Result<()>>)>(
        &mut self,
        run: &mut Run<'_, '_, G, D>,
        current: Option<u64>,
    ) -> Current {
        while !run.flights.is_empty() {
            if self.land_oldest(run, current) == Current::Finished {
                return Current::Finished;
            }
        }
        Current::Going
    }

    /// The group being placed cannot go on (no room, a placement refused): land what is in
    /// flight, then write it again write by write (unless a failure already did).
    fn fail_current<G: WriteGroup, D: FnMut(&Volume, &G, Vec<Result<()>>)>(
        &mut self,
        run: &mut Run<'_, '_, G, D>,
        id: u64,
        group: &Arc<G>,
    ) {
        if self.drain(run, Some(id)) == Current::Finished {
            return;
        }
        let writes = group.writes();
        let outcomes = self.write_each(run, &writes);
        drop(writes);
        (run.done)(self, group, outcomes);
    }

    /// Each write alone, with the members as they are then (a write that succeeded in part
    /// is written again whole: the same bytes); its outcome.
    fn write_each<G, D>(
        &mut self,
        run: &mut Run<'_, '_, G, D>,
        writes: &[GroupWrite<'_>],
    ) -> Vec<Result<()>> {
        writes
            .iter()
            .map(|write| {
                run.refresh();
                self.write_writes(&run.devices, std::slice::from_ref(write))
            })
            .collect()
    }
}

/// The writes of a unit's batch, from its group's encoded writes.
fn batch_refs<'w>(
    encoded: &[&'w EncodedWrite],
    batch: &UnitBatch,
) -> Vec<(&'w EncodedWrite, std::ops::Range<usize>)> {
    batch
        .iter()
        .filter_map(|(w, rows)| encoded.get(*w).map(|e| (*e, rows.clone())))
        .collect()
}

/// Start writing `unit` (placed from `batch` of `group`'s encoded writes): on a thread of its
/// own when `threaded`, the unit is large enough and a thread can be made, else here, now.
fn unit_io<'scope, G: WriteGroup + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    devices: Arc<Vec<Option<SharedDevice>>>,
    threaded: bool,
    group: &Arc<G>,
    batch: UnitBatch,
    unit: &PlacedUnit,
) -> Io<'scope> {
    let requests = Arc::clone(&unit.requests);
    let leader = std::thread::current();
    let write = {
        let group = Arc::clone(group);
        move || {
            let writes = group.writes();
            let encoded = encoded_only(&writes).unwrap_or_default();
            let failures = requests.write(&devices, &batch_refs(&encoded, &batch));
            leader.unpark();
            failures
        }
    };
    let bytes: usize = unit.requests.runs.iter().map(Vec::len).sum::<usize>() * BLOCK_BYTES;
    if threaded && bytes >= THREAD_BYTES_MIN {
        let shared = Arc::new(parking_lot::Mutex::new(Some(write)));
        let on_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("stripestore-unit".into())
            .spawn_scoped(scope, move || {
                let write = on_thread.lock().take();
                write.map_or_else(Vec::new, |write| write())
            });
        if let Ok(handle) = spawned {
            return Io::Running(handle);
        }
        // No thread: written here (the closure was not run).
        let write = shared.lock().take();
        return Io::Done(write.map_or_else(Vec::new, |write| write()));
    }
    Io::Done(write())
}
