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

/// The cores this process may use (asked once: the answer reads cgroup files).
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
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

/// Run `work` on every item on at most `threads` scoped threads, each taking the next item
/// not yet taken when it is done with one, and collect the results in order (sequentially,
/// in order, where [`each`] would be).
pub(crate) fn pulled<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len());
    if threads <= 1 || is_sequential() {
        return items.iter().map(&work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let pull = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return mine;
            };
            mine.push((i, work(item)));
        }
    };
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let pull = &pull;
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(pull)).collect();
        for handle in handles {
            match handle.join() {
                Ok(mine) => {
                    for (i, result) in mine {
                        results[i] = Some(result);
                    }
                }
                // A panic in `work` is a bug; re-raise it on the caller's thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Every index below the length was taken by exactly one thread, which returned its result.
    results.into_iter().flatten().collect()
}

/// Run `work` on every item, the first on this thread and each other on its own scoped
/// thread, each with the item to itself (sequentially, in order, where [`each`] would be).
pub(crate) fn each_mut<T: Send>(items: &mut [T], work: impl Fn(&mut T) + Sync) {
    if items.len() <= 1 || is_sequential() {
        items.iter_mut().for_each(&work);
        return;
    }
    // Each item taken once, by its thread or (when its thread cannot be made: a limit on
    // threads) by this one.
    let slots: Vec<std::sync::Mutex<Option<&mut T>>> = items
        .iter_mut()
        .map(|item| std::sync::Mutex::new(Some(item)))
        .collect();
    let run = |slot: &std::sync::Mutex<Option<&mut T>>| {
        let taken = match slot.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(item) = taken {
            work(item);
        }
    };
    std::thread::scope(|scope| {
        let run = &run;
        let handles: Vec<_> = slots[1..]
            .iter()
            .filter_map(|slot| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || run(slot))
                    .ok()
            })
            .collect();
        // The first item, then any whose thread was not made.
        slots.iter().for_each(run);
        for handle in handles {
            if let Err(panic) = handle.join() {
                // A panic in `work` is a bug; re-raise it on the caller's thread.
                std::panic::resume_unwind(panic);
            }
        }
    });
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
    fn pulled_items_are_each_taken_once_by_at_most_the_threads_asked_and_come_back_in_order() {
        let items: Vec<u64> = (0..40).collect();
        let taken = std::sync::Mutex::new(Vec::new());
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let out = super::pulled(&items, 3, |x| {
            taken.lock().unwrap().push(*x);
            threads.lock().unwrap().insert(std::thread::current().id());
            // Uneven work, so that the threads take items at different paces.
            std::thread::sleep(std::time::Duration::from_micros(50 * (x % 4)));
            x * 10
        });
        assert_eq!(out, items.iter().map(|x| x * 10).collect::<Vec<_>>());
        let mut taken = taken.into_inner().unwrap();
        taken.sort_unstable();
        assert_eq!(taken, items, "every item once");
        let threads = threads.into_inner().unwrap();
        assert!(
            !threads.is_empty() && threads.len() <= 3,
            "{} threads",
            threads.len()
        );
        assert!(!threads.contains(&std::thread::current().id()));
        // Sequential mode: in order, on this thread.
        super::set_sequential(true);
        let me = std::thread::current().id();
        let order = std::sync::Mutex::new(Vec::new());
        super::pulled(&items[..5], 3, |x| {
            assert_eq!(std::thread::current().id(), me);
            order.lock().unwrap().push(*x);
        });
        super::set_sequential(false);
        assert_eq!(order.into_inner().unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(super::pulled(&[] as &[u64], 3, |x| *x).is_empty());
    }

    #[test]
    fn each_item_is_worked_on_once_in_place() {
        let mut items: Vec<u32> = (0..5).collect();
        super::each_mut(&mut items, |x| *x *= 3);
        assert_eq!(items, vec![0, 3, 6, 9, 12]);
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
