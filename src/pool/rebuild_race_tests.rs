//! Regression (found in review): the end of a rebuild must swap in the replacement it filled,
//! not whichever is attached by then. If the filled one is abandoned during the final step (a
//! foreground write to it failed) and another is attached meanwhile (`replace`, or a spare),
//! that new, empty device must not become a full member.
use crate::device::{Device, DeviceError, MemDevice, SharedDevice};
use crate::pool::{Identity, PoolInner};
use crate::types::DeviceIndex;
use crate::{CreateOptions, OpenOptions, Pool};
use parking_lot::Mutex;
use std::sync::Arc;

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
struct Hooked {
    inner: MemDevice,
    hook: Mutex<Option<HookBox>>,
}
struct HookBox(Hook);
impl std::fmt::Debug for HookBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hook")
    }
}

impl Device for Hooked {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let hook = self.hook.lock().take();
        if let Some(HookBox(hook)) = hook {
            hook();
        }
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

#[test]
fn abandoned_then_reattached_replacement_is_not_swapped_in_unfilled() {
    let size = 4 << 20;
    let mems = crate::testing::mem_devices(2, size);
    let mut options = CreateOptions::new("mirror:2".parse().unwrap());
    options.chunk_bytes = 4096;
    // A version-3 pool (its own engine): the test machinery's switch.
    crate::testing::allow_format_3_writes(true);
    options.format = crate::pool::FormatVersion::V3;
    options.open = OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        ..OpenOptions::default()
    };
    let pool = Pool::create(crate::testing::shared(&mems), vec![], &options).unwrap();
    let data: Vec<u8> = (0..pool.size() as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();

    let r1 = Arc::new(Hooked {
        inner: MemDevice::new("r1", size),
        hook: Mutex::new(None),
    });
    let r2 = Arc::new(MemDevice::new("r2", size));
    pool.replace("mem0", r1.clone() as SharedDevice, false)
        .unwrap();
    let inner: Arc<PoolInner> = Arc::clone(&pool.inner);
    let slots = inner.geometry.slots;
    loop {
        let next = pool.rebuild_progress()[0].next_slot;
        if next + 512 >= slots {
            break;
        }
        pool.rebuild_step(false).unwrap();
    }
    // Final step: while it copies onto r1, r1 is abandoned (as write_batch does when a
    // foreground write to it fails) and r2 attached (as `replace` / auto-replace would).
    let hook_inner = Arc::clone(&inner);
    let r2_hook = r2.clone();
    *r1.hook.lock() = Some(HookBox(Box::new(move || {
        hook_inner
            .members
            .abandon_replacement(DeviceIndex(0), "simulated foreground write failure");
        hook_inner
            .attach_replacement(
                DeviceIndex(0),
                Identity {
                    uuid: crate::format::PoolUuid::random(),
                    path: "r2".into(),
                    domain: None,
                },
                r2_hook as SharedDevice,
                false,
            )
            .unwrap();
    })));
    let outcome = pool.rebuild_step(false).unwrap();
    assert!(outcome.completed.is_empty(), "{outcome:?}");
    let status = pool.status();
    // Lose the only complete copy.
    mems[1].set_gone(true);
    let mut back = vec![0u8; data.len()];
    let read = pool.read_at(0, &mut back);
    assert!(
        status.devices[0].path != "r2" || (read.is_ok() && back == data),
        "r2 was swapped in as a full member without being rebuilt; read after losing mem1: {read:?}"
    );
}

/// A rebuild step holds the slots it copies, and commits run during a step: a slot whose stripe
/// was rewritten and committed while it was held is not handed out (its cell on the
/// replacement would be overwritten by a new stripe while the step may still write the old
/// content there), and becomes free once the step releases it.
#[test]
fn a_slot_released_by_a_commit_while_a_rebuild_holds_it_stays_out_of_reuse_until_released() {
    use crate::rebuild::RebuildTarget;
    use crate::types::{SlotId, StripeId};
    let mems = crate::testing::mem_devices(2, 4 << 20);
    let mut options = CreateOptions::new("mirror:2".parse().unwrap());
    options.chunk_bytes = 4096;
    // A version-3 pool (its own engine): the test machinery's switch.
    crate::testing::allow_format_3_writes(true);
    options.format = crate::pool::FormatVersion::V3;
    options.open = OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        ..OpenOptions::default()
    };
    let pool = Pool::create(crate::testing::shared(&mems), vec![], &options).unwrap();
    let chunk = vec![0x11u8; 4096];
    pool.write_at(0, &chunk).unwrap();
    pool.flush().unwrap();
    let inner: &PoolInner = &pool.inner;
    let old = inner.map.lock().map.slot(StripeId(0)).unwrap();
    let held = inner.hold_live_stripes(old, SlotId(old.0 + 1), |_| true);
    assert_eq!(held.len(), 1);
    // Rewrite the stripe (another slot) and commit: the commit releases the old slot.
    pool.write_at(0, &vec![0x22u8; 4096]).unwrap();
    pool.flush().unwrap();
    assert_ne!(inner.map.lock().map.slot(StripeId(0)), Some(old));
    assert!(
        !inner.map.lock().free.contains(&old.0),
        "a held slot was made free by a commit"
    );
    // Nothing written meanwhile lands in it.
    for i in 1..64u64 {
        pool.write_at(i * 4096, &chunk).unwrap();
        pool.flush().unwrap();
        assert_ne!(inner.map.lock().map.slot(StripeId(i)), Some(old));
    }
    inner.release_held(&[old]);
    let state = inner.map.lock();
    assert!(state.free.contains(&old.0), "released, the slot is free");
    assert!(state.freed_while_held.is_empty());
}
