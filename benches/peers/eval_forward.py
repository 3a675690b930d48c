"""PyTorch peer of `kiln-benches`' eval_forward: torchvision eval forward, median ms.

    python benches/peers/eval_forward.py --arch resnet50 --batch-size 16 --image-size 224 \
        --threads 2 --steps 10

Prints one JSON line: {"peer": "pytorch", "arch", "batch_size", "image_size", "threads",
"median_ms", "times_ms"}.
"""

import argparse
import json
import statistics
import time

import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = getattr(torchvision.models, a.arch)(num_classes=1000).eval()
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size)
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t = time.perf_counter()
            model(x)
            if i >= a.warmup:
                times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({
        "peer": "pytorch", "arch": a.arch, "batch_size": a.batch_size,
        "image_size": a.image_size, "threads": a.threads,
        "median_ms": statistics.median(times), "times_ms": times,
    }))


if __name__ == "__main__":
    main()
