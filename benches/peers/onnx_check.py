"""kiln's ONNX export and its weights, checked by PyTorch's tools: the ONNX checker, then the
same input through onnxruntime, through torchvision with kiln's `model.safetensors` loaded
strictly, and through `kiln predict --input-tensor`; max abs/relative differences of the
logits; onnxruntime's CPU img/s beside `kiln bench predict`'s on the same batch size. One
JSON line per model.

    python benches/peers/onnx_check.py --kiln target/release/kiln --model outputs/model \
        --onnx model.onnx [--batch 8] [--iters 10] [--threads 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import safetensors.numpy
import safetensors.torch
import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True)
    p.add_argument("--model", required=True, help="kiln model directory")
    p.add_argument("--onnx", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    onnx.checker.check_model(args.onnx, full_check=True)
    proto = onnx.load(args.onnx)
    meta = {e.key: e.value for e in proto.metadata_props}
    info = json.load(open(os.path.join(args.model, "kiln.json")))
    assert meta["arch"] == info["arch"] and json.loads(meta["classes"]) == info["classes"], meta
    size = int(meta["image_size"])

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
        safetensors.numpy.save_file({"input": x}, inp)
        subprocess.run([args.kiln, "predict", "--arch", info["arch"], "--weights",
                        os.path.join(args.model, "model.safetensors"), "--input-tensor", inp,
                        "--logits-out", out], check=True)
        kiln = safetensors.numpy.load_file(out)["logits"]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {"input": x})[0]
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)

    torch.set_num_threads(args.threads)
    sd = safetensors.torch.load_file(os.path.join(args.model, "model.safetensors"))
    net = getattr(torchvision.models, info["arch"])(num_classes=len(info["classes"]))
    net.load_state_dict(sd, strict=True)  # raises on any missing or unexpected key
    net.eval()
    with torch.no_grad():
        tv = net(torch.from_numpy(x)).numpy()

    bench = subprocess.run([args.kiln, "bench", "predict", "--model", args.model, "--batch-size",
                            str(args.batch), "--iters", str(args.iters), "--json"],
                           check=True, capture_output=True, text=True)
    kiln_ips = json.loads(bench.stdout.strip().splitlines()[-1])["images_per_s"]

    def diff(a, b):
        return float(np.abs(a - b).max()), float((np.abs(a - b) / np.maximum(np.abs(b), 1.0)).max())

    ort_abs, ort_rel = diff(ort_logits, kiln)
    tv_abs, tv_rel = diff(tv, kiln)
    print(json.dumps({
        "arch": info["arch"], "batch": args.batch, "image_size": size,
        "onnx_mb": os.path.getsize(args.onnx) / 1e6, "opset": proto.opset_import[0].version,
        "checker": "ok", "ort_vs_kiln_max_abs": ort_abs, "ort_vs_kiln_max_rel": ort_rel,
        "torchvision_vs_kiln_max_abs": tv_abs, "torchvision_vs_kiln_max_rel": tv_rel,
        "ort_images_per_s": args.batch / statistics.median(times),
        "kiln_predict_images_per_s": kiln_ips,
    }))
    if max(ort_rel, tv_rel) > 1e-4:
        raise SystemExit(f"logits differ beyond 1e-4 relative: ort {ort_rel}, torchvision {tv_rel}")


if __name__ == "__main__":
    main()
