//! `stripestore import`: list the pools whose devices are at the given locations (`--scan`,
//! default the current directory), like `zpool import` without importing: pool, state, layout
//! and every member with where it was found. Reads superblocks only; writes nothing.

use super::CliResult;
use std::path::PathBuf;
use stripestore::pool::find_pools;

/// Print every pool found at `locations` (the current directory if none), as text or JSON.
pub fn run(locations: &[PathBuf], json: bool) -> CliResult {
    let locations = if locations.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        locations.to_vec()
    };
    let pools = find_pools(&locations);
    if json {
        println!("{}", serde_json::to_string_pretty(&pools)?);
        return Ok(());
    }
    if pools.is_empty() {
        let shown: Vec<String> = locations.iter().map(|l| l.display().to_string()).collect();
        println!("no pools found in {}", shown.join(", "));
        return Ok(());
    }
    for (i, pool) in pools.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("   pool: {}", pool.pool);
        println!("  state: {}", pool.state);
        if let Some(error) = &pool.error {
            println!(" status: {error}");
        }
        println!(
            " layout: {} (superblock generation {})",
            pool.layout, pool.generation
        );
        println!(" config:\n");
        println!(
            "\t{:<10} {:<11} {:<11} {:<36} PATH",
            "POSITION", "ROLE", "STATE", "UUID"
        );
        for device in &pool.devices {
            let position = device
                .index
                .map_or_else(|| "-".to_string(), |i| i.to_string());
            let path = match &device.path {
                Some(path) if *path != device.recorded_path => {
                    format!("{path} (recorded as {})", device.recorded_path)
                }
                Some(path) => path.clone(),
                None => format!("not found (recorded as {})", device.recorded_path),
            };
            println!(
                "\t{position:<10} {:<11} {:<11} {:<36} {path}",
                device.role, device.state, device.uuid
            );
        }
    }
    Ok(())
}
