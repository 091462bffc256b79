//! `stripestore demo`: the whole story on temporary files, checked against regenerated data.

use super::{CliResult, Progress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use stripestore::types::human_bytes;
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

const PIECE_BYTES: u64 = 4 << 20;
const DATA_SEED: u64 = 0x5EED;

/// Deterministic content of one piece of the volume, so it can be checked without keeping it.
fn piece_content(index: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(DATA_SEED ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

fn pieces(size: u64) -> impl Iterator<Item = (u64, u64, usize)> {
    (0..size.div_ceil(PIECE_BYTES)).map(move |i| {
        let offset = i * PIECE_BYTES;
        (
            i,
            offset,
            usize::try_from(PIECE_BYTES.min(size - offset)).unwrap_or(0),
        )
    })
}

fn write_all(pool: &Pool) -> CliResult {
    let mut progress = Progress::new("writing", pool.size());
    for (index, offset, len) in pieces(pool.size()) {
        pool.write_at(offset, &piece_content(index, len))?;
        progress.advance(len as u64);
    }
    pool.flush()?;
    let rate = progress.finish();
    println!(
        "   wrote {} of seeded random data and flushed ({}/s)",
        human_bytes(pool.size()),
        human_bytes(rate)
    );
    Ok(())
}

fn verify_all(pool: &Pool, label: &str) -> CliResult {
    let mut progress = Progress::new(label, pool.size());
    let mut buf = vec![0u8; usize::try_from(PIECE_BYTES)?];
    for (index, offset, len) in pieces(pool.size()) {
        pool.read_at(offset, &mut buf[..len])?;
        if buf[..len] != piece_content(index, len)[..] {
            return Err(format!(
                "data mismatch in the piece at volume offset {offset}: this is a bug"
            )
            .into());
        }
        progress.advance(len as u64);
    }
    let rate = progress.finish();
    println!(
        "   all {} read back byte-exact ({}/s)",
        human_bytes(pool.size()),
        human_bytes(rate)
    );
    Ok(())
}

/// Flip one bit in `count` data chunks spread over the online members (never `skip`), at most
/// one per stripe (version 3) or row (version 4) so that each stays within its redundancy even
/// with a device lost. The bit is in the first 4 KiB of the chunk: a version-4 row holds 4 KiB
/// of each chunk (`Pool::block_locations` names that shard-block), and both formats check 4 KiB.
fn rot_chunks(
    pool: &Pool,
    paths: &[PathBuf],
    skip: usize,
    count: usize,
) -> Result<usize, Box<dyn std::error::Error>> {
    const BLOCK: u64 = 4096;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let blocks = pool.size() / BLOCK;
    let mut used = std::collections::HashSet::new();
    let mut rotted = 0;
    for attempt in 0..count * 16 {
        if rotted == count {
            break;
        }
        let device = attempt % paths.len();
        if device == skip {
            continue;
        }
        let locations = pool.block_locations(rng.gen_range(0..blocks) * BLOCK);
        let Some(shard) = locations
            .iter()
            .find(|s| s.device == device && s.data_chunk.is_some())
        else {
            continue;
        };
        // The stripe or row, by where its first shard is.
        if !used.insert((locations[0].device, locations[0].offset)) {
            continue;
        }
        // Behind the pool's back: a plain file handle, not a (locked) device.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths[device])?;
        let at = shard.offset + rng.gen_range(0..BLOCK);
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at)?;
        byte[0] ^= 1 << rng.gen_range(0..8);
        file.write_all_at(&byte, at)?;
        file.sync_data()?;
        rotted += 1;
    }
    Ok(rotted)
}

pub(crate) fn device_count(layout: Layout) -> usize {
    match layout {
        Layout::Mirror { copies } => copies,
        Layout::Raid10 { copies } => 2 * copies,
        Layout::ReedSolomon { data, parity } => data + parity,
    }
}

pub fn run(layout: &str, device_bytes: u64, dir: Option<&Path>) -> CliResult {
    let layout: Layout = layout.parse()?;
    let (dir, _temp) = super::work_dir(dir, &std::env::temp_dir())?;
    let count = device_count(layout);
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("dev{i}.img")))
        .collect();
    let spare = dir.join("spare0.img");
    // The demo drives every step itself, so it can narrate them.
    // Forced: the demo deletes devices on purpose, so a degraded mirror needs no proof that
    // the survivor is current.
    let manual = OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        force: true,
        ..OpenOptions::default()
    };

    println!(
        "== 1. create a {layout} pool on {count} files of {} plus one spare, in {}",
        human_bytes(device_bytes),
        dir.display()
    );
    let mut options = CreateOptions::new(layout);
    options.device_bytes = Some(device_bytes);
    options.force = true;
    options.open = manual.clone();
    let pool = Pool::create_paths(&paths, std::slice::from_ref(&spare), &options)?;
    let tolerance = pool.geometry().tolerance();
    println!(
        "   volume {} (chunk {}, {} data chunks per stripe, survives {tolerance} lost device(s))",
        human_bytes(pool.size()),
        human_bytes(pool.geometry().chunk_bytes),
        pool.geometry().data_chunks()
    );

    println!("== 2. write the whole volume");
    write_all(&pool)?;

    let victim = 1;
    // With one device of redundancy, healing needs it intact: rot first, destroy after.
    let destroy_first = tolerance >= 2;
    let mut pool = pool;
    let mut step = 3;
    let mut rotted = 0;
    for phase in 0..2 {
        if (phase == 0) == destroy_first {
            println!(
                "== {step}. destroy device {victim} ({}): the file is deleted",
                paths[victim].display()
            );
            pool.close()?;
            std::fs::remove_file(&paths[victim])?;
            pool = Pool::open_paths(&paths[..1], &manual)?;
            println!(
                "   reopened from {} alone; the others were found by their recorded paths",
                paths[0].display()
            );
            verify_all(&pool, "degraded read")?;
        } else {
            rotted = rot_scrub_and_clear(&pool, &paths, victim, count, step)?;
        }
        step += 1;
    }

    println!("== {step}. rebuild onto the spare (only stripes that hold data are copied)");
    pool.attach_spares();
    super::run_rebuilds_with_progress(&pool)?;
    let status = pool.status();
    println!(
        "   pool is {} again; {} now holds position {victim}",
        status.health, status.devices[victim].path
    );
    pool.close()?;
    step += 1;

    let second = if victim == 0 { 2 } else { 0 };
    println!("== {step}. lose device {second} too: the rebuilt spare must now serve its share");
    // Out of the pool's directory: a member moved within it would be found again there.
    std::fs::create_dir_all(dir.join("set-aside"))?;
    std::fs::rename(&paths[second], dir.join("set-aside").join("set-aside.img"))?;
    let pool = Pool::open_paths(std::slice::from_ref(&spare), &manual)?;
    println!("   reopened from the rebuilt spare alone");
    verify_all(&pool, "read with spare")?;

    println!("== summary\n");
    print!("{}", pool.status());
    println!(
        "\n   {rotted} corrupted chunks healed, device {victim} lost and rebuilt onto the spare, device {second} lost; {} verified byte-exact at every step.",
        human_bytes(pool.size())
    );
    pool.close()?;
    Ok(())
}

/// Flip a bit in chunks of every device but `victim`, behind the pool's back; read everything
/// (healing on the way), scrub twice (the second must find nothing), and clear members the
/// error rate marked degraded. Returns how many chunks were corrupted.
fn rot_scrub_and_clear(
    pool: &Pool,
    paths: &[PathBuf],
    victim: usize,
    count: usize,
    step: usize,
) -> Result<usize, Box<dyn std::error::Error>> {
    let to_rot = (20 * (count - 1)).min(100);
    println!("== {step}. corrupt blocks: flip one bit in {to_rot} data chunks across the other devices, behind the pool's back");
    let rotted = rot_chunks(pool, paths, victim, to_rot)?;
    verify_all(pool, "read with bit rot")?;
    let status = pool.status();
    println!(
        "   checksum errors detected: {}, chunks healed in place: {}",
        status.total_checksum_errors(),
        status.total_repaired()
    );
    let scrub = pool.scrub()?;
    println!(
        "   scrub: every shard of {} stripes verified; {} more bad shards found in copies or parity that no read touched, repaired",
        scrub.stripes_checked, scrub.bad_shards
    );
    let again = pool.scrub()?;
    println!(
        "   second scrub: {} bad shards (the damage is healed on disk)",
        again.bad_shards
    );
    if again.found_damage() {
        return Err("the second scrub still found damage: this is a bug".into());
    }
    // Rot at this rate marks members DEGRADED (they kept serving throughout); the
    // operator, knowing the cause, clears them.
    let degraded: Vec<String> = pool
        .status()
        .devices
        .iter()
        .filter(|d| d.state == "DEGRADED")
        .map(|d| d.path.clone())
        .collect();
    if !degraded.is_empty() {
        println!(
            "   {} member(s) marked DEGRADED for their error rate, still serving; `clear` once the cause is known",
            degraded.len()
        );
        pool.clear(None)?;
    }
    Ok(rotted)
}
