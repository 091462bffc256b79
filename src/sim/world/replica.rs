//! Send and receive in the simulation (docs/FORMAT.md V4.10d; format version 4): a recovery
//! point of the pool under test is sent, whole or from the replica's newest, into a replica
//! pool of another layout on its own members and power switch, and received there, at times
//! with the power cut in the middle of the receive. Checked against a model of the replica:
//! its recovery points and their content, its live volume (the newest received), that an
//! unfinished receive reads as before and refuses writes, that a resume gives the stream's
//! recovery point and an abort the state before with every data block it wrote freed.
//!
//! Owns: the replica and its model. Does not own: the pool under test's recovery points
//! (points.rs), which are the senders.

use super::{is_clear, Check, World, POWER_ON};
use crate::device::{MemDevice, PowerCut, SharedDevice};
use crate::error::Error;
use crate::testing::Model;
use crate::{CreateOptions, Pool};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The replica pool and what it must hold.
pub(super) struct Replica {
    mems: Vec<Arc<MemDevice>>,
    countdown: Arc<AtomicI64>,
    pool: Option<Pool>,
    /// Its recovery points, oldest first, with their content (the sender's).
    points: Vec<(String, Model)>,
}

impl Replica {
    fn handles(&self) -> Vec<SharedDevice> {
        self.mems
            .iter()
            .map(|m| {
                Arc::new(PowerCut::new(
                    Arc::clone(m) as SharedDevice,
                    Arc::clone(&self.countdown),
                )) as SharedDevice
            })
            .collect()
    }

    fn pool(&self) -> std::result::Result<&Pool, String> {
        self.pool
            .as_ref()
            .ok_or_else(|| "the replica is not open".to_string())
    }

    /// What its live volume reads: the newest received recovery point (zeros before any).
    fn live(&self, size: u64) -> Model {
        self.points
            .last()
            .map_or_else(|| Model::new(size), |(_, content)| content.clone())
    }
}

impl World<'_> {
    /// A new, empty replica: mirror:2 (another layout than most runs'), members large enough
    /// for the pool's volume.
    fn new_replica(&self, size: u64) -> std::result::Result<Replica, String> {
        let bytes = (size + size / 2 + (8 << 20)).next_multiple_of(1 << 20);
        let mems: Vec<Arc<MemDevice>> = (0..2)
            .map(|i| Arc::new(MemDevice::new(format!("replica{i}"), bytes)))
            .collect();
        let mut replica = Replica {
            mems,
            countdown: Arc::new(AtomicI64::new(POWER_ON)),
            pool: None,
            points: Vec::new(),
        };
        let layout = "mirror:2"
            .parse()
            .map_err(|e| format!("the replica's layout: {e}"))?;
        let mut options = CreateOptions::new(layout);
        options.chunk_bytes = 16384;
        options.open = Self::open_options(self.config, false, false);
        options.format = Self::format(self.config);
        let pool = Pool::create(replica.handles(), vec![], &options)
            .map_err(|e| format!("the replica cannot be made: {e}"))?;
        if pool.size() < size {
            return Err(format!(
                "the replica holds {} bytes, the pool {size}",
                pool.size()
            ));
        }
        replica.pool = Some(pool);
        Ok(replica)
    }

    /// `Op::Replicate`: send the `pick`-th recovery point to the replica (from the replica's
    /// newest when the pool still has it, else whole into a new replica) and receive it there;
    /// with `cut`, the replica's power is cut after that many device operations of the
    /// receive, the replica reopened, and an unfinished receive resumed (`seed` odd) or
    /// aborted.
    pub(super) fn replicate(&mut self, pick: u8, cut: Option<u16>, seed: u64) -> Check {
        if !self.config.format4
            || self.pool.is_none()
            || self.points.is_empty()
            || !self.within_tolerance()
        {
            return self.skip();
        }
        let index = usize::from(pick) % self.points.len();
        let (to, content) = (
            self.points[index].name.clone(),
            self.points[index].content.clone(),
        );
        let size = self.model.latest.len();
        let newest = self
            .replica
            .as_ref()
            .and_then(|r| r.points.last().map(|(name, _)| name.clone()));
        // One the replica has already (a receive refuses it: tested in the suites).
        if self
            .replica
            .as_ref()
            .is_some_and(|r| r.points.iter().any(|(name, _)| *name == to))
        {
            return self.skip();
        }
        // From the replica's newest when the pool has it still; a replica that has moved on
        // otherwise starts over (a full stream goes into an empty pool only).
        let base = newest.filter(|n| self.points.iter().any(|p| p.name == *n));
        if base.is_none() {
            self.replica = Some(self.new_replica(size)?);
        }
        let mut stream = Vec::new();
        match self
            .pool()?
            .send(&to, base.as_deref(), &mut stream, &mut |_| {})
        {
            Ok(_) => {}
            Err(err) if is_clear(&err) => return Ok(()),
            Err(err) => return Err(format!("send of {to}: {err}")),
        }
        *self
            .stats
            .faults
            .entry(if base.is_some() {
                "replicate-incremental".into()
            } else {
                "replicate-full".into()
            })
            .or_default() += 1;
        let replica = self.replica.as_mut().ok_or("no replica")?;
        let before = replica.live(size);
        let allocated_before = allocated(replica.pool()?)?;
        if let Some(cut) = cut {
            replica.countdown.store(i64::from(cut), Ordering::SeqCst);
        }
        let outcome = replica
            .pool()?
            .receive(&mut std::io::Cursor::new(&stream), &mut |_, _| {});
        let was_cut = replica.countdown.load(Ordering::SeqCst) <= 0;
        replica.countdown.store(POWER_ON, Ordering::SeqCst);
        if !was_cut {
            outcome.map_err(|e| format!("receive of {to} into the replica: {e}"))?;
            replica.points.push((to.clone(), content));
            return self.verify_replica(size, &format!("after receiving {to}"));
        }
        // The power was cut in the receive: every member keeps a random part of what it did
        // not flush; the replica is opened again.
        if let Some(pool) = replica.pool.take() {
            pool.simulate_power_loss();
        }
        for (i, mem) in replica.mems.iter().enumerate() {
            mem.crash(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9));
        }
        let options = Self::open_options(self.config, false, false);
        replica.pool = Some(
            Pool::open(replica.handles(), &options)
                .map_err(|e| format!("the replica after a cut in a receive: {e}"))?,
        );
        let pool = replica.pool()?;
        let listed: Vec<String> = pool
            .recovery_points()
            .map_err(|e| format!("the replica's recovery points: {e}"))?
            .into_iter()
            .map(|p| p.name)
            .collect();
        if pool.unfinished_receive().is_some() {
            *self
                .stats
                .faults
                .entry("receive-cut-unfinished".into())
                .or_default() += 1;
            // As before, to every reader; a write refused.
            compare(pool, &before, size, "an unfinished receive")?;
            match pool.write_at(0, &[1u8; 4096]) {
                Err(Error::ReceiveUnfinished { .. }) => {}
                other => {
                    return Err(format!(
                        "a write during an unfinished receive gave {other:?}"
                    ))
                }
            }
            if seed % 2 == 1 {
                let report = pool
                    .receive(&mut std::io::Cursor::new(&stream), &mut |_, _| {})
                    .map_err(|e| format!("resume of the receive of {to}: {e}"))?;
                if !report.resumed {
                    return Err("a resumed receive says it was not".into());
                }
                replica.points.push((to.clone(), content));
            } else {
                pool.abort_receive()
                    .map_err(|e| format!("abort of the receive of {to}: {e}"))?;
                let now = allocated(pool)?;
                if now != allocated_before {
                    return Err(format!(
                        "LEAK: the replica held {allocated_before} bytes of data before the \
                         receive and {now} after its abort"
                    ));
                }
            }
        } else if listed.last() == Some(&to) {
            replica.points.push((to.clone(), content));
        } else {
            compare(pool, &before, size, "a receive cut before it began")?;
        }
        self.verify_replica(size, &format!("after a cut in the receive of {to}"))
    }

    /// The replica lists the model's recovery points, its volume reads as the newest, and
    /// the newest reads as its content.
    fn verify_replica(&mut self, size: u64, when: &str) -> Check {
        let Some(replica) = self.replica.as_ref() else {
            return Ok(());
        };
        let pool = replica.pool()?;
        let listed: Vec<String> = pool
            .recovery_points()
            .map_err(|e| format!("{when}: the replica's recovery points: {e}"))?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let model: Vec<String> = replica.points.iter().map(|(n, _)| n.clone()).collect();
        if listed != model {
            return Err(format!(
                "{when}: the replica lists {listed:?}, the model has {model:?}"
            ));
        }
        compare(pool, &replica.live(size), size, when)?;
        if let Some((name, content)) = replica.points.last() {
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            pool.read_recovery_point(name, 0, &mut buf)
                .map_err(|e| format!("{when}: the replica's {name}: {e}"))?;
            if buf != content.read(0, buf.len()) {
                return Err(format!(
                    "WRONG BYTES: {when}: the replica's recovery point {name} differs from \
                     the sender's"
                ));
            }
        }
        self.stats.checked_reads += 1;
        Ok(())
    }
}

/// The replica's live volume reads as `model` over the pool's volume.
fn compare(pool: &Pool, model: &Model, size: u64, when: &str) -> Check {
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    pool.read_at(0, &mut buf)
        .map_err(|e| format!("{when}: a read of the replica: {e}"))?;
    match buf
        .iter()
        .zip(model.read(0, buf.len()))
        .position(|(a, b)| a != b)
    {
        None => Ok(()),
        Some(at) => Err(format!(
            "WRONG BYTES: {when}: the replica differs from its model at byte {at}"
        )),
    }
}

/// Bytes of data the pool holds, after a flush.
fn allocated(pool: &Pool) -> std::result::Result<u64, String> {
    pool.flush()
        .map_err(|e| format!("a flush of the replica: {e}"))?;
    Ok(pool.status().allocated_bytes)
}
