#!/usr/bin/env bash
# Build check: the library as a program embeds it (default features) carries no test machinery
# and no command-line crates.
#  1. `cargo tree` of the library's normal dependencies shows no clap, signal-hook,
#     tracing-subscriber or tempfile.
#  2. A default build of the library has no planted-bug switch: a program that sets one does
#     not compile against it ("no field `planted`"), and does compile with the `testing`
#     feature (so the check can fail).
set -euo pipefail
cd "$(dirname "$0")/.."

deps=$(cargo tree -p stripestore -e normal --prefix none --format '{p}' | sort -u)
if grep -E '^(clap|signal-hook|tracing-subscriber|tempfile) ' <<<"$deps"; then
    echo "check-library: the library depends on a command-line crate (above)" >&2
    exit 1
fi

target="$PWD/target/check-library"
# A program that links the library and tries to switch a protection off. It must not compile
# against a default build (the switches, and so every place that reads them, do not exist
# there), and must compile with the `testing` feature (so the check can fail).
probe="$target/probe"
mkdir -p "$probe/src"
cat >"$probe/src/main.rs" <<'RUST'
fn main() {
    let mut options = stripestore::OpenOptions::default();
    options.planted.skip_checksum_verification = true;
    println!("{:?}", options.planted);
}
RUST
write_manifest() {
    cat >"$probe/Cargo.toml" <<TOML
[package]
name = "check-library-probe"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
stripestore = { path = "$PWD", default-features = false$1 }

[workspace]
TOML
}
write_manifest ""
if CARGO_TARGET_DIR="$target" cargo check -q --manifest-path "$probe/Cargo.toml" 2>"$target/probe.err"; then
    echo "check-library: a program can switch verification off in a default build of the library" >&2
    exit 1
fi
if ! grep -q "no field \`planted\`" "$target/probe.err"; then
    echo "check-library: the probe failed for another reason:" >&2
    cat "$target/probe.err" >&2
    exit 1
fi
write_manifest ', features = ["testing"]'
if ! CARGO_TARGET_DIR="$target" cargo check -q --manifest-path "$probe/Cargo.toml"; then
    echo "check-library: the probe does not compile even with the testing feature" >&2
    exit 1
fi
echo "check-library: the default library has no command-line crates, and no program linking it can switch a protection off"
