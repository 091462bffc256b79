#!/usr/bin/env bash
# Build check: the library as a program embeds it (default features) carries no test machinery
# and no command-line crates.
#  1. `cargo tree` of the library's normal dependencies shows no clap, signal-hook,
#     tracing-subscriber or tempfile.
#  2. A default build of the library contains no planted-bug switch: the identifiers of the
#     switches (`PlantedBugs`, `skip_checksum_verification`, ...) appear nowhere in its rlib,
#     while they do appear in a build with the `testing` feature (so the check can fail).
set -euo pipefail
cd "$(dirname "$0")/.."

deps=$(cargo tree -p stripestore -e normal --prefix none --format '{p}' | sort -u)
if grep -E '^(clap|signal-hook|tracing-subscriber|tempfile) ' <<<"$deps"; then
    echo "check-library: the library depends on a command-line crate (above)" >&2
    exit 1
fi

target=target/check-library
switches='PlantedBugs|skip_checksum_verification|skip_commit_data_flush|fault_on_data_errors'
cargo build -q -p stripestore --lib --target-dir "$target"
if grep -a -q -E "$switches" "$target/debug/libstripestore.rlib"; then
    echo "check-library: a default build of the library carries a planted-bug switch" >&2
    exit 1
fi
cargo build -q -p stripestore --lib --features testing --target-dir "$target"
if ! grep -a -q -E "$switches" "$target/debug/libstripestore.rlib"; then
    echo "check-library: the check cannot see the switches even with the feature on" >&2
    exit 1
fi
echo "check-library: the default library has no command-line crates and no planted-bug switch"
