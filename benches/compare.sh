#!/usr/bin/env bash
# kiln against its PyTorch peer, in the same run, alternating (ABAB), medians and the ratio.
#
#   benches/compare.sh train PYTHON [ROUNDS] -- [kiln bench train flags]
#   benches/compare.sh data  PYTHON [ROUNDS] -- DIR [--image-size N --batch-size N --workers N]
#
# PYTHON is an interpreter with torch and torchvision (e.g. /tmp/torch/bin/python). The kiln
# binary is built in release mode first. Prints one line per measurement and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
what=$1 python=$2 rounds=${3:-3}
shift 3 || shift $#
[ "${1:-}" = "--" ] && shift
cargo build --release -q -p kiln
kiln="${CARGO_TARGET_DIR:-target}/release/kiln"
threads=$(nproc)
results=$(mktemp)
for _ in $(seq "$rounds"); do
    case $what in
    train)
        "$kiln" bench train --json "$@" | tee -a "$results"
        # The peer takes the same flags; kiln's --device is its own.
        peer_args=$(printf '%s\n' "$@" | paste -sd' ' | sed -E 's/--device [a-z]+//')
        # shellcheck disable=SC2086
        "$python" benches/peers/train_step.py --threads "$threads" $peer_args | tee -a "$results"
        ;;
    data)
        "$kiln" bench data --json "$@" | tee -a "$results"
        "$python" benches/peers/data_loader.py "$@" | tee -a "$results"
        ;;
    *) echo "usage: $0 train|data PYTHON [ROUNDS] -- FLAGS" >&2; exit 2 ;;
    esac
done
python3 - "$results" "$what" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
key = "median_images_per_s" if sys.argv[2] == "train" else "images_per_s"
by = {}
for r in rows:
    by.setdefault(r["engine"], []).append(r)
# kiln's rows carry the step's GFLOP/s and the GEMM peak; the peer does the same work an image.
kiln = [r for r in rows if r.get("gflops")]
per_image = statistics.median(r["gflops"] / r[key] for r in kiln) if kiln else None
peak = statistics.median(r["peak_gflops"] for r in kiln if r.get("peak_gflops")) if kiln else None
if kiln:
    k = kiln[0]
    print(f"{k['cpu']}, gemm {k['simd']}, {k['threads']} threads, GEMM peak {peak:.0f} GFLOP/s")
for engine, rs in by.items():
    ips = statistics.median(r[key] for r in rs)
    rss = max(r.get("peak_rss_mb", 0) for r in rs)
    flops = ""
    if per_image:
        gflops = ips * per_image
        flops = f"   {gflops:6.1f} GFLOP/s" + (f" ({gflops / peak:.0%} of peak)" if peak else "")
    print(f"{engine:<12} median img/s {ips:9.1f}{flops}   peak RSS {rss:7.0f} MiB   ({len(rs)} rounds)")
engines = list(by)
if len(engines) == 2:
    a, b = (statistics.median(r[key] for r in by[e]) for e in engines)
    print(f"{engines[0]}/{engines[1]} throughput ratio: {a / b:.2f}")
PY
rm -f "$results"
