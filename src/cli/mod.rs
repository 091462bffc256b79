//! Command-line front end: argument parsing, logging setup, output formats and exit codes.
//! Exit codes: 0 success, 1 operation failed (message on stderr), 2 bad usage.

mod demo;
mod progress;

use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use stripestore::types::{human_bytes, parse_size};
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

pub use progress::Progress;

#[derive(Parser, Debug)]
#[command(
    name = "stripestore",
    version,
    about = "Redundant block storage: mirror and Reed-Solomon striping with checksummed, self-healing reads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a pool on files or block devices (files are created with --device-size).
    Create {
        /// Layout: mirror:N, raid10:N or rs:K+M.
        #[arg(long)]
        layout: String,
        /// A spare device (repeatable).
        #[arg(long = "spare")]
        spares: Vec<PathBuf>,
        /// Size of each device; files that do not exist are created at this size.
        #[arg(long, value_parser = parse_size)]
        device_size: Option<u64>,
        /// Chunk size (multiple of 4K).
        #[arg(long, value_parser = parse_size, default_value = "16K")]
        chunk_size: u64,
        /// Overwrite devices that hold another pool's superblock.
        #[arg(long)]
        force: bool,
        /// Data devices, in layout order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show pool health, devices and error counters.
    Status {
        /// One or more member paths (the others are found through the recorded paths).
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write stdin (or --input) to the volume at --offset, then flush.
    Write {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Volume byte offset.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Input file (default: stdin).
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Read --length bytes at --offset to stdout (or --output).
    Read {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Volume byte offset.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes to read.
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Verify every shard of every written stripe and heal what fails.
    Scrub {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story on temporary files: create, write, lose a device, read back,
    /// corrupt blocks, heal, report.
    Demo {
        /// Layout to demonstrate.
        #[arg(long, default_value = "rs:4+2")]
        layout: String,
        /// Size of each of the temporary devices.
        #[arg(long, value_parser = parse_size, default_value = "64M")]
        device_size: u64,
        /// Keep the pool in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Parse arguments, run, and map the outcome to an exit code.
pub fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRIPESTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stripestore: error: {err}");
            let mut source = std::error::Error::source(err.as_ref());
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn execute(command: Command) -> CliResult {
    match command {
        Command::Create {
            layout,
            spares,
            device_size,
            chunk_size,
            force,
            paths,
        } => {
            let layout: Layout = layout.parse()?;
            let mut options = CreateOptions::new(layout);
            options.chunk_bytes = chunk_size;
            options.device_bytes = device_size;
            options.force = force;
            let pool = Pool::create_paths(&paths, &spares, &options)?;
            let status = pool.status();
            pool.close()?;
            println!(
                "created pool {} ({}) on {} devices and {} spares: {} usable",
                status.pool,
                status.layout,
                paths.len(),
                spares.len(),
                human_bytes(status.volume_bytes)
            );
            Ok(())
        }
        Command::Status { pool, json } => {
            let pool = Pool::open_paths(&pool, &OpenOptions::default())?;
            let status = pool.status();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            pool.close()?;
            Ok(())
        }
        Command::Write {
            pool,
            offset,
            input,
        } => {
            let pool = Pool::open_paths(&pool, &OpenOptions::default())?;
            let mut reader: Box<dyn Read> = match &input {
                Some(path) => Box::new(
                    std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
                ),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut buf = vec![0u8; 8 << 20];
            let mut written = 0u64;
            loop {
                let n = read_full(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                pool.write_at(offset + written, &buf[..n])?;
                written += n as u64;
            }
            pool.close()?;
            eprintln!("wrote {written} bytes at offset {offset} (flushed)");
            Ok(())
        }
        Command::Read {
            pool,
            offset,
            length,
            output,
        } => {
            let pool = Pool::open_paths(&pool, &OpenOptions::default())?;
            let mut writer: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let piece = 8u64 << 20;
            let mut done = 0u64;
            let mut buf = vec![0u8; usize::try_from(piece.min(length))?];
            while done < length {
                let n = usize::try_from(piece.min(length - done))?;
                pool.read_at(offset + done, &mut buf[..n])?;
                writer.write_all(&buf[..n])?;
                done += n as u64;
            }
            writer.flush()?;
            pool.close()?;
            Ok(())
        }
        Command::Scrub { pool, json } => {
            let pool = Pool::open_paths(&pool, &OpenOptions::default())?;
            let report = pool.scrub();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "scrub: {} stripes checked, {} bad shards found, {} stripes unrecoverable",
                    report.stripes_checked,
                    report.bad_shards,
                    report.unrecoverable_stripes.len()
                );
                print!("{}", pool.status());
            }
            let failed = !report.unrecoverable_stripes.is_empty();
            pool.close()?;
            if failed {
                return Err(format!(
                    "{} stripes are unrecoverable",
                    report.unrecoverable_stripes.len()
                )
                .into());
            }
            Ok(())
        }
        Command::Demo {
            layout,
            device_size,
            dir,
        } => demo::run(&layout, device_size, dir.as_deref()),
    }
}

/// Read until `buf` is full or input ends.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
