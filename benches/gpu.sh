#!/usr/bin/env bash
# kiln against PyTorch on one CUDA GPU, alternating, in one call that fits in 8 minutes.
#
#   benches/gpu.sh KILN [PYTHON]
#
# KILN is a kiln binary built with `--features cuda` (scripts/setup-cuda-build.sh where LLVM
# cannot be downloaded), plain or compressed with zstd, xz or gzip (strip it first: a machine
# lent for a short while may take at most 64 MiB). PYTHON has torch and torchvision with CUDA
# (default python3). For resnet18, resnet50 and densenet121 at 224 px, batch 32 and 256, it
# runs `kiln bench train --device cuda` and benches/peers/train_step.py --device cuda, one
# after the other, in f32 with TF32 matmuls (both engines' default on CUDA) and in mixed
# precision (bf16 autocast; kiln's row only where its `--precision` exists), and prints img/s,
# the ratio and each process's peak GPU memory (nvidia-smi). Rows still waiting when
# GPU_BENCH_BUDGET_S (default 450) seconds have passed are printed as not run.
#
# Environment: STEPS (timed steps, default 10), WARMUP (default 3), ARCHS, BATCHES.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 KILN [PYTHON]" >&2
    exit 2
fi
kiln=$1 python=${2:-python3}
steps=${STEPS:-10} warmup=${WARMUP:-3}
archs=${ARCHS:-resnet18 resnet50 densenet121}
batches=${BATCHES:-32 256}
budget=${GPU_BENCH_BUDGET_S:-450}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case $kiln in
*.zst) zstd -dq "$kiln" -o "$work/kiln" ;;
*.xz) xz -dc "$kiln" > "$work/kiln" ;;
*.gz) gzip -dc "$kiln" > "$work/kiln" ;;
*) cp "$kiln" "$work/kiln" ;;
esac
chmod +x "$work/kiln"
kiln=$work/kiln
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu.sh: nvidia-smi finds no GPU" >&2
    exit 1
fi
nvidia-smi -L
has_precision=0
"$kiln" bench train --help | grep -q -- --precision && has_precision=1

# Runs a command, sampling its GPU memory; appends its JSON line (with peak_gpu_smi_mb) or a
# failure line to the results.
run() {
    local label=$1
    shift
    "$@" > "$work/out" 2> "$work/err" &
    local pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
        local used
        used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits \
            2>/dev/null | awk -F', ' -v p="$pid" '$1 == p {print $2}')
        [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
        sleep 0.2
    done
    wait "$pid"
    local rc=$?
    local line
    line=$(grep '^{' "$work/out" | tail -1)
    if [ $rc -eq 0 ] && [ -n "$line" ]; then
        echo "$line" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); \
r['label']='$label'; r['peak_gpu_smi_mb']=$peak; print(json.dumps(r))" >> "$work/results"
    else
        echo "{\"label\": \"$label\", \"failed\": $(tail -c 300 "$work/err" | python3 -c \
            'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$work/results"
    fi
    tail -1 "$work/results"
}

start=$SECONDS
for batch in $batches; do
    for arch in $archs; do
        for precision in tf32 bf16; do
            label="$arch $batch $precision"
            if [ $((SECONDS - start)) -gt "$budget" ]; then
                echo "{\"label\": \"$label\", \"failed\": \"not run: past the time budget\"}" \
                    >> "$work/results"
                continue
            fi
            common=(--arch "$arch" --batch-size "$batch" --image-size 224 --steps "$steps"
                --warmup "$warmup")
            if [ "$precision" = tf32 ] || [ $has_precision = 1 ]; then
                extra=()
                [ $has_precision = 1 ] && extra=(--precision "$precision")
                run "kiln $label" timeout 120 "$kiln" bench train --device cuda --json \
                    "${common[@]}" "${extra[@]}"
            else
                echo "{\"label\": \"kiln $label\", \"failed\": \"this kiln has no --precision\"}" \
                    >> "$work/results"
            fi
            run "pytorch $label" timeout 120 "$python" benches/peers/train_step.py \
                --device cuda --precision "$precision" "${common[@]}"
        done
    done
done

python3 - "$work/results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["label"]: r for r in rows}
print(f"\n{'arch':<12} {'batch':>5} {'precision':<9} {'kiln img/s':>10} {'torch img/s':>11} "
      f"{'ratio':>6} {'kiln GPU MiB':>12} {'torch GPU MiB':>13}")
for label in by:
    if not label.startswith("kiln "):
        continue
    key = label[5:]
    k, t = by[label], by.get("pytorch " + key, {})
    arch, batch, precision = key.split()
    kips, tips = k.get("median_images_per_s"), t.get("median_images_per_s")
    cell = lambda v, w: f"{v:>{w}.1f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
    ratio = kips / tips if kips and tips else None
    print(f"{arch:<12} {batch:>5} {precision:<9} {cell(kips, 10)} {cell(tips, 11)} "
          f"{cell(ratio, 6) if ratio is None else f'{ratio:>6.2f}'} "
          f"{cell(k.get('peak_gpu_smi_mb'), 12)} {cell(t.get('peak_gpu_smi_mb'), 13)}")
for r in rows:
    if "failed" in r:
        print(f"{r['label']}: {r['failed'].strip()[-200:]}")
PY
