#!/usr/bin/env bash
# Runs the fuzz targets one after another: fuzz/run.sh [SECONDS] [TARGET...]
# (default: 600 seconds each, every target). New inputs go to fuzz/corpus/<target>/, crashes
# to fuzz/artifacts/<target>/ (cargo-fuzz's place); each run ends with libFuzzer's stats.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]; SECONDS is a whole number, not '$seconds'" >&2
    exit 2
fi
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pth safetensors kiln_json job_file idx metrics_jsonl)
fi
[ -d seeds/idx ] || python3 seeds.py
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    seeds=()
    if [ -d "seeds/$target" ]; then
        seeds+=("seeds/$target")
    fi
    if [ "$target" = pth ]; then
        # torch.save files, zip and legacy pickle, from the weight tests.
        seeds+=(../models/tests/fixtures)
    fi
    # The format's keys and edge values, for targets that read text.
    dict=()
    if [ -f "dicts/$target.dict" ]; then
        dict=("-dict=dicts/$target.dict")
    fi
    # Safe Rust: no sanitizer; the targets cap single allocations at 1 GiB themselves.
    cargo +nightly fuzz run --sanitizer none "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=262144 \
        -print_final_stats=1 "${dict[@]}"
    # The scratch folders of fuzzing processes that have ended.
    for dir in /dev/shm/kiln-fuzz-* "${TMPDIR:-/tmp}"/kiln-fuzz-*; do
        [ -d "$dir" ] || continue
        kill -0 "${dir##*-}" 2>/dev/null || rm -rf "$dir"
    done
done
