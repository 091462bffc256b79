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

/// The format_decode fuzzer starts from a superblock that carries the v4 scrub cursor and the
/// skipped-segment count (optional JSON fields since 2026-12-04), so it mutates them too.
#[test]
fn a_format_decode_seed_carries_the_v4_scrub_cursor() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds/format_decode/superblock-v4-scrub-cursor");
    let superblock =
        stripestore::format::Superblock::decode(&std::fs::read(path).unwrap()).unwrap();
    let checkpoint = superblock.scrub.in_progress.expect("a scrub in progress");
    assert_eq!(checkpoint.segments.map(|c| c.next_segment), Some(12));
    assert_eq!(checkpoint.tally.segments_skipped, 2);
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

#[test]
fn send_stream_seeds() {
    replay("send_stream", stripestore::fuzzing::send_stream);
}
