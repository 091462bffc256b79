#!/usr/bin/env bash
# Run one fuzz target for a while: tools/fuzz.sh format_decode|pool_ops|nbd_request [SECONDS]
set -euo pipefail
target=${1:?usage: tools/fuzz.sh format_decode|pool_ops|nbd_request [SECONDS]}
seconds=${2:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$target" -- -max_total_time="$seconds"
