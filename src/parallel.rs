//! Device-parallel operations that run while a lock is held (commit, superblock writes,
//! rebuild batches, scrub steps). Owns only the fan-out and the per-thread "sequential" switch;
//! it knows nothing of pools, stripes or devices (the pool, scrub and rebuild all use it), and
//! must not import any of them.
//!
//! The work runs on scoped OS threads, never the rayon pool: a rayon worker that waits for pool
//! work runs other queued tasks meanwhile, and one of those may need the very lock the waiting
//! worker holds. A scoped thread only ever runs its own closure.

use std::cell::Cell;

thread_local! {
    /// Set on a thread whose pool work must run in a fixed order (the simulation: requests to
    /// different devices share a power-cut countdown, so their interleaving must not vary).
    static SEQUENTIAL: Cell<bool> = const { Cell::new(false) };
}

/// Make [`each`] on this thread run its items one after another, in order.
pub(crate) fn set_sequential(sequential: bool) {
    SEQUENTIAL.with(|flag| flag.set(sequential));
}

/// Whether [`each`] runs sequentially on this thread (a thread the pool spawns inherits it).
pub(crate) fn is_sequential() -> bool {
    SEQUENTIAL.with(Cell::get)
}

/// Run `work` on every item, each on its own scoped thread, and collect the results in order.
pub(crate) fn each<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 || is_sequential() {
        return items.iter().map(&work).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(result) => result,
                // A panic in `work` is a bug; re-raise it on the caller's thread.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_back_in_order() {
        let items: Vec<u32> = (0..8).collect();
        assert_eq!(
            super::each(&items, |x| x * 2),
            vec![0, 2, 4, 6, 8, 10, 12, 14]
        );
        assert_eq!(super::each(&[5u32], |x| x + 1), vec![6]);
    }

    #[test]
    fn sequential_mode_runs_in_order_on_this_thread() {
        super::set_sequential(true);
        let me = std::thread::current().id();
        let seen = std::sync::Mutex::new(Vec::new());
        super::each(&[1u32, 2, 3], |x| {
            assert_eq!(std::thread::current().id(), me);
            seen.lock().unwrap().push(*x);
        });
        super::set_sequential(false);
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    }
}
