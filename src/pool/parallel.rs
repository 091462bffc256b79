//! Device-parallel operations that run while a lock is held (commit, superblock writes,
//! rebuild batches). They use scoped OS threads, never the rayon pool: a rayon worker that
//! waits for pool work runs other queued tasks meanwhile, and one of those may need the very
//! lock the waiting worker holds. A scoped thread only ever runs its own closure.

/// Run `work` on every item, each on its own scoped thread, and collect the results in order.
pub(crate) fn each<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
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
}
