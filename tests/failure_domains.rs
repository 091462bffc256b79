//! Failure domains (docs/FORMAT.md V4.16, section 2): create refuses a set whose loss of one
//! domain would lose data and writes nothing; the domains are recorded and shown; spares are
//! attached only where their domain keeps the rule, so that after an automatic replacement
//! the loss of a whole domain still reads back every byte (planted `domains_ignored` breaks
//! exactly that).

use crate::common;

use common::{random_writes, reads_as, v4_options};
use std::sync::Arc;
use stripestore::device::{Device, MemDevice, SharedDevice};
use stripestore::testing::{mem_devices, shared, Model};
use stripestore::{CreateOptions, Error, OpenOptions, Pool};

const DEVICE_BYTES: u64 = 16 << 20;

fn with_domains(layout: &str, domains: &[&str]) -> CreateOptions {
    let mut options = v4_options(layout);
    options.domains = domains.iter().map(|d| d.to_string()).collect();
    options
}

/// Whether any byte of `device` is not zero (create wrote something).
fn written(device: &MemDevice) -> bool {
    device
        .peek(0, usize::try_from(device.size()).unwrap())
        .iter()
        .any(|b| *b != 0)
}

#[test]
fn create_refuses_a_domain_set_whose_loss_would_lose_data_and_writes_nothing() {
    let cases: [(&str, usize, &[&str], &str); 5] = [
        // Two hosts of three members: losing one loses three shards of rs:4+2.
        ("rs:4+2", 6, &["a", "a", "a", "b", "b", "b"], "would hold 3"),
        // A raid10 mirror pair in one host.
        ("raid10:2", 4, &["a", "a", "b", "b"], "would hold 2"),
        // Some devices without a domain.
        ("rs:4+2", 6, &["a", "a", "b", "b", "c"], "5 given for 6"),
        // A bad name.
        ("rs:4+2", 6, &["a", "a", "b", "b", "c", "c d"], "letters"),
        ("mirror:2", 2, &["a", "a"], "would hold 2"),
    ];
    for (layout, count, domains, said) in cases {
        let mems = mem_devices(count, DEVICE_BYTES);
        let err = Pool::create(shared(&mems), vec![], &with_domains(layout, domains)).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig(m) if m.contains(said)),
            "{layout} {domains:?}: {err}"
        );
        assert!(
            !mems.iter().any(|m| written(m)),
            "{layout}: a refused create wrote"
        );
    }
    // Version 3 has no domains: asked for a version 3 pool (`v3_options`, since `options()`
    // now makes version 4) with a domain set that version 4 would take, create refuses and
    // writes nothing.
    let mems = mem_devices(6, DEVICE_BYTES);
    let mut options = common::v3_options("rs:4+2");
    options.domains = ["a", "a", "b", "b", "c", "c"].map(String::from).to_vec();
    let err = Pool::create(shared(&mems), vec![], &options).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig(m) if m.contains("format version 4")),
        "version 3: {err}"
    );
    assert!(
        !mems.iter().any(|m| written(m)),
        "version 3: a refused create wrote"
    );
    // The same set on version 4 is taken: the refusal above is version 3's.
    let mems = mem_devices(6, DEVICE_BYTES);
    Pool::create(
        shared(&mems),
        vec![],
        &with_domains("rs:4+2", &["a", "a", "b", "b", "c", "c"]),
    )
    .unwrap();
}

#[test]
fn domains_are_recorded_gated_and_shown_across_reopen() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let domains = ["h1", "h1", "h2", "h2", "h3", "h3"];
    let pool = Pool::create(shared(&mems), vec![], &with_domains("rs:4+2", &domains)).unwrap();
    pool.close().unwrap();
    let pool = Pool::open(shared(&mems), &common::v4_open_options()).unwrap();
    let status = pool.status();
    let shown: Vec<&str> = status
        .devices
        .iter()
        .map(|d| d.domain.as_deref().unwrap())
        .collect();
    assert_eq!(shown, domains);
    let text = status.to_string();
    assert!(text.contains("DOMAIN") && text.contains("  h2"), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["devices"][3]["domain"], "h2");
    // The gate: an older build reading the map parameters refuses the pool by this name.
    let sb = stripestore::pool::read_label(mems[0].as_ref())
        .unwrap()
        .unwrap();
    assert!(sb.map.unwrap().failure_domains);
    // A spare must have a domain in such a pool; a pool without domains takes none.
    let spare = Arc::new(MemDevice::new("spare", DEVICE_BYTES));
    assert!(pool
        .add_spare(spare.clone() as SharedDevice, false)
        .is_err());
    assert!(pool
        .add_spare_in(spare.clone() as SharedDevice, false, "bad name")
        .is_err());
    pool.add_spare_in(spare as SharedDevice, false, "h4")
        .unwrap();
    assert_eq!(pool.status().spares[0].domain.as_deref(), Some("h4"));
    pool.close().unwrap();
    let plain = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&plain), vec![], &v4_options("rs:4+2")).unwrap();
    let spare = Arc::new(MemDevice::new("spare2", DEVICE_BYTES));
    assert!(pool
        .add_spare_in(spare as SharedDevice, false, "h1")
        .is_err());
    assert!(!pool.status().to_string().contains("DOMAIN"));
    pool.close().unwrap();
}

/// rs:4+2 on three hosts of two, spares in h1 (listed first) and h4. A member of h3 fails:
/// the automatic replacement must take the h4 spare (h1 would then hold three shards of every
/// stripe). After the rebuild, host h1 is lost whole (both members): every byte reads back.
/// With `domains_ignored` planted the h1 spare is taken and the same loss makes reads fail.
fn replace_then_lose_a_domain(planted: bool) -> Result<(), String> {
    let mut rng = stripestore::testing::rng(0x18d0);
    let mems = mem_devices(6, DEVICE_BYTES);
    let spare_h1 = Arc::new(MemDevice::new("spare-h1", DEVICE_BYTES));
    let spare_h4 = Arc::new(MemDevice::new("spare-h4", DEVICE_BYTES));
    let mut options = with_domains("rs:4+2", &["h1", "h1", "h2", "h2", "h3", "h3", "h1", "h4"]);
    options.open.background_rebuild = false;
    options.open.planted.domains_ignored = planted;
    let spares = vec![
        spare_h1.clone() as SharedDevice,
        spare_h4.clone() as SharedDevice,
    ];
    let pool = Pool::create(shared(&mems), spares, &options).unwrap();
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 150);
    pool.flush().unwrap();
    mems[4].set_gone(true);
    // A read or write reaches the lost member and faults it; spares are then attached.
    random_writes(&pool, &mut model, &mut rng, 40);
    pool.flush().unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    let status = pool.status();
    let taken = status.devices[4].path.clone();
    assert_eq!(status.devices[4].state, "ONLINE", "{status}");
    random_writes(&pool, &mut model, &mut rng, 40);
    pool.close().unwrap();
    if !planted {
        assert_eq!(taken, "spare-h4", "the spare that keeps the rule");
    }
    // Host h1 is lost whole: its two members and the h1 spare, whatever it became.
    let keep: Vec<SharedDevice> = [2usize, 3, 5]
        .iter()
        .map(|i| mems[*i].clone() as SharedDevice)
        .chain([spare_h4 as SharedDevice])
        .collect();
    let forced = OpenOptions {
        force: true,
        ..common::v4_open_options()
    };
    let pool = Pool::open(keep, &forced).map_err(|e| e.to_string())?;
    let outcome = reads_as(&pool, &model);
    pool.close().unwrap();
    outcome
}

#[test]
fn a_spare_is_attached_only_where_its_domain_keeps_the_rule_and_a_domain_loss_reads_back() {
    replace_then_lose_a_domain(false).unwrap();
}

#[test]
fn planted_domains_ignored_loses_data_when_a_domain_goes() {
    let outcome = replace_then_lose_a_domain(true);
    assert!(outcome.is_err(), "the planted bug went unnoticed");
    eprintln!("planted domains_ignored: {}", outcome.unwrap_err());
}
