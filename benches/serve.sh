#!/usr/bin/env bash
# `kiln serve` under load against its peer, onnxruntime serving kiln's own ONNX export from a
# minimal Python HTTP service (benches/peers/onnx_serve.py), alternating (kiln, peer, kiln,
# peer, ...): CLIENTS concurrent clients POST images to /predictions/NAME for SECONDS, at kiln
# batch limits 1, 8 and 32 (one model copy) and 1 and 8 with two. Prints img/s, p50/p99
# latency, errors and peak RSS per service, and `kiln predict`'s img/s on the same images.
#
#   benches/serve.sh PYTHON [SECONDS] [CLIENTS] [MODEL_DIR]
#
# KILN=path runs that kiln binary instead of building `target/release/kiln` (say, one built with
# `--features cuda`, whose features a plain build would rebuild).
# PYTHON has onnxruntime, onnx, pillow and numpy. Without MODEL_DIR a resnet18 is trained for
# one epoch on the bundled Fashion-MNIST subset at 64 px and served; images are its val set.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1 seconds=${2:-30} clients=${3:-16} model=${4:-}
kiln=${KILN:-}
if [ -z "$kiln" ]; then
    cargo build --release -q -p kiln
    kiln="${CARGO_TARGET_DIR:-target}/release/kiln"
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
images=data/fashion-mnist-mini/val
if [ -z "$model" ]; then
    "$kiln" train --data data/fashion-mnist-mini --epochs 1 --image-size 64 --output-dir "$work/run" \
        >/dev/null
    model="$work/run/model"
fi
"$kiln" export onnx --model "$model" --out "$work/model.onnx" >/dev/null
results="$work/results"

# Waits until URL answers 200.
wait_ready() {
    for _ in $(seq 600); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "never ready: $1" >&2
    exit 1
}

# Runs the load against the service PID at PORT, then adds its peak RSS and stops it.
load() {
    local label=$1 pid=$2 port=$3
    "$python" benches/peers/serve_load.py --url "http://127.0.0.1:$port" --path /predictions/model \
        --images "$images" --clients "$clients" --seconds "$seconds" --label "$label" \
        >"$work/one"
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"
    wait "$pid" || true
    "$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["peak_rss_mb"]=round(int(sys.argv[2])/1024); print(json.dumps(r))' \
        "$work/one" "$rss" | tee -a "$results"
}

# batch limit:model copies
for config in 1:1 1:2 8:1 32:1 8:2; do
    batch=${config%:*} workers=${config#*:}
    "$kiln" serve "$model" --name model --no-auth --port 18080 --max-batch-size "$batch" \
        --max-batch-delay-ms 5 --workers "$workers" >"$work/kiln.log" &
    pid=$!
    wait_ready http://127.0.0.1:18080/v2/health/ready
    load "kiln serve, batch $batch x$workers" "$pid" 18080
    "$python" benches/peers/onnx_serve.py --onnx "$work/model.onnx" --port 18081 >/dev/null &
    pid=$!
    wait_ready http://127.0.0.1:18081/
    load "onnxruntime peer" "$pid" 18081
done

# kiln predict over the same images, one process (model load included, and without it).
count=$(find "$images" -type f | wc -l)
start=$(date +%s.%N)
"$kiln" predict --model "$model" --format json "$images" >/dev/null
end=$(date +%s.%N)
"$python" - "$results" "$count" "$start" "$end" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
count, start, end = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
peer = [r for r in rows if r["engine"] == "onnxruntime peer"]
peer_ips = statistics.median(r["images_per_s"] for r in peer) if peer else 0.0
print(f"\n{'service':<28} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MB':>7} {'vs peer':>8}")
for r in rows:
    ratio = r["images_per_s"] / peer_ips if peer_ips else float("nan")
    print(f"{r['engine']:<28} {r['images_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
          f"{r['errors']:>7} {r['peak_rss_mb']:>7} {ratio:>7.2f}x")
print(f"{'peer median':<28} {peer_ips:>8.1f}")
print(f"{'kiln predict (one process)':<28} {count / (end - start):>8.1f}   ({count} images, load included)")
PY
