//! Replays the committed seed inputs of every fuzz target (`fuzz/seeds/<target>/`) through the
//! same functions the fuzzers call (`stripestore::fuzzing`), on the stable toolchain. A crash a
//! fuzzer finds is added there as a regression input.

use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 3, "{target}: too few seed inputs");
    for path in inputs {
        let bytes = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        property(&bytes);
    }
}

#[test]
fn format_decode_seeds() {
    replay("format_decode", stripestore::fuzzing::format_decode);
}

#[test]
fn log_replay_seeds() {
    replay("log_replay", stripestore::fuzzing::log_replay);
}

#[test]
fn codec_roundtrip_seeds() {
    replay("codec_roundtrip", stripestore::fuzzing::codec_roundtrip);
}

#[test]
fn meta_page_seeds() {
    replay("meta_page", stripestore::fuzzing::meta_page);
}

#[test]
fn meta_recovery_seeds() {
    replay("meta_recovery", stripestore::fuzzing::meta_recovery);
}
