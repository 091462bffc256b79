//! Group commit: flushes that arrive while a commit runs share the next one.
//!
//! Owns only the bookkeeping of which flush-started commits began after which arrival; the
//! commit itself is the caller's closure (`PoolInner::commit`). Must not touch devices, the map
//! or the volume.
//!
//! A flush promises that every write completed before it was called survives power loss once it
//! returns. A commit makes durable what had landed when it took the volume's exclusive lock, so
//! it covers a flush exactly when it *started* after that flush arrived: a commit already
//! running at the arrival may have taken its lock before the flush's writes landed. So each
//! flush notes how many commits had started when it arrived and returns `Ok` only once a commit
//! numbered above that has succeeded, running one itself when none is running. (Letting a flush
//! also count a running commit that has not taken the lock yet was tried: no gain measured,
//! README "Flushes that arrive together share a commit".)
//!
//! Why: a client at queue depth 16 sends flushes far more often than its writes need (fio 3.33's
//! `--fsync=32` sends one per 3–4 writes at depth 16, measured), and each used to take the volume
//! lock behind the queued writes and run a commit of its own: 650 µs waiting for the lock per
//! 77 µs of commit (README, "Flushes that arrive together share a commit"). A commit that fails
//! answers only the flush that ran it; the flushes waiting on it run the next commit themselves
//! and get its own outcome, so none returns `Ok` without a successful commit that started after
//! it arrived.

use parking_lot::{Condvar, Mutex};

/// The commits started by flushes, and the newest of them that succeeded.
#[derive(Debug, Default)]
pub(crate) struct FlushGroup {
    state: Mutex<GroupState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Commits started by flushes so far; the first is number 1.
    started: u64,
    /// The highest-numbered of them that succeeded (0: none).
    succeeded: u64,
    /// A flush's commit is running.
    running: bool,
    /// Flushes waiting for a commit (for the tests).
    waiting: usize,
}

/// Marks the running commit finished however its closure ends (a panic too), so the flushes
/// waiting on it are woken and one of them commits.
struct Running<'a> {
    group: &'a FlushGroup,
    number: u64,
    ok: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.group.state.lock();
        state.running = false;
        if self.ok {
            state.succeeded = state.succeeded.max(self.number);
        }
        drop(state);
        self.group.finished.notify_all();
    }
}

impl FlushGroup {
    /// Return once a commit that started after this call has succeeded (`commit` run here when
    /// none is running), or the error of the commit this call ran.
    pub(crate) fn flush<E>(&self, commit: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.state.lock();
        let arrived = state.started;
        while state.running && state.succeeded <= arrived {
            state.waiting += 1;
            self.finished.wait(&mut state);
            state.waiting -= 1;
        }
        if state.succeeded > arrived {
            return Ok(());
        }
        state.running = true;
        state.started += 1;
        let mut running = Running {
            group: self,
            number: state.started,
            ok: false,
        };
        drop(state);
        let result = commit();
        running.ok = result.is_ok();
        result
    }

    /// Flushes waiting for a commit now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// A model of the pool: writes bump `landed`; a commit waits for the lock a while, captures
    /// `landed`, and after a while makes that much durable.
    #[derive(Default)]
    struct Model {
        landed: AtomicU64,
        durable: AtomicU64,
        commits: AtomicU64,
    }

    impl Model {
        fn commit(&self, fail: bool) -> Result<(), &'static str> {
            std::thread::sleep(Duration::from_millis(1));
            let captured = self.landed.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            self.commits.fetch_add(1, Ordering::SeqCst);
            if fail {
                return Err("commit failed");
            }
            self.durable.fetch_max(captured, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Wait until `count` flushes wait on `group`.
    fn until_waiting(group: &FlushGroup, count: usize) {
        while group.waiting() < count {
            std::thread::yield_now();
        }
    }

    #[test]
    fn every_flush_finds_what_landed_before_it_durable_and_flushes_share_commits() {
        let group = Arc::new(FlushGroup::default());
        let model = Arc::new(Model::default());
        let flushes = 8 * 40;
        let threads: Vec<_> = (0..8u64)
            .map(|thread| {
                let (group, model) = (Arc::clone(&group), Arc::clone(&model));
                std::thread::spawn(move || {
                    let mut jitter = thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for _ in 0..40 {
                        // Arrivals spread over every moment of a commit (0-3 ms apart).
                        jitter ^= jitter << 13;
                        jitter ^= jitter >> 7;
                        jitter ^= jitter << 17;
                        std::thread::sleep(Duration::from_micros(jitter % 3000));
                        let mine = model.landed.fetch_add(1, Ordering::SeqCst) + 1;
                        group.flush(|| model.commit(false)).unwrap();
                        let durable = model.durable.load(Ordering::SeqCst);
                        assert!(
                            durable >= mine,
                            "write {mine} landed, flushed, durable {durable}"
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let commits = model.commits.load(Ordering::SeqCst);
        // Eight threads flushing at once: most flushes find a commit to wait for.
        assert!(
            commits < flushes / 2,
            "{commits} commits for {flushes} flushes"
        );
    }

    #[test]
    fn a_failed_commit_answers_its_own_flush_and_the_waiting_ones_commit_again() {
        let group = Arc::new(FlushGroup::default());
        let model = Arc::new(Model::default());
        let (to_commit, at_commit) = mpsc::channel::<()>();
        let (to_test, at_test) = mpsc::channel::<()>();
        let first = {
            let (group, model) = (Arc::clone(&group), Arc::clone(&model));
            std::thread::spawn(move || {
                group.flush(|| {
                    // Fail once the second flush waits on this commit.
                    to_test.send(()).unwrap();
                    at_commit.recv().unwrap();
                    model.commit(true)
                })
            })
        };
        at_test.recv().unwrap();
        let second = {
            let (group, model) = (Arc::clone(&group), Arc::clone(&model));
            std::thread::spawn(move || {
                model.landed.fetch_add(1, Ordering::SeqCst);
                group.flush(|| model.commit(false))
            })
        };
        until_waiting(&group, 1);
        to_commit.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Err("commit failed"));
        assert_eq!(second.join().unwrap(), Ok(()));
        assert_eq!(model.commits.load(Ordering::SeqCst), 2);
        assert_eq!(model.durable.load(Ordering::SeqCst), 1);
        // A flush alone after a failure runs its own commit and reports its error.
        assert_eq!(group.flush(|| model.commit(true)), Err("commit failed"));
    }

    #[test]
    fn a_commit_that_panics_does_not_leave_the_flushes_after_it_waiting() {
        let group = Arc::new(FlushGroup::default());
        let panicked = {
            let group = Arc::clone(&group);
            std::thread::spawn(move || group.flush::<()>(|| panic!("planted")))
        };
        assert!(panicked.join().is_err());
        assert_eq!(group.flush::<()>(|| Ok(())), Ok(()));
    }
}
