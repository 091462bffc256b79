#!/usr/bin/env bash
# Run one fuzz target for a while, starting from its committed seeds:
#   tools/fuzz.sh format_decode|log_replay|codec_roundtrip|pool_ops|nbd_request|meta_page|meta_recovery [SECONDS]
# Stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the flags cargo-fuzz needs; -s none: no sanitizer.
set -euo pipefail
target=${1:?usage: tools/fuzz.sh format_decode|log_replay|codec_roundtrip|pool_ops|nbd_request|meta_page|meta_recovery [SECONDS]}
seconds=${2:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p "corpus/$target"
seeds=()
[ -d "seeds/$target" ] && seeds=("seeds/$target")
[ -d "../tests/data/$target" ] && seeds+=("../tests/data/$target")
RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$target" "corpus/$target" "${seeds[@]}" -- -max_total_time="$seconds"
