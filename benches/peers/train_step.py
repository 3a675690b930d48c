"""PyTorch peer of `kiln bench train`: full SGD training steps of a torchvision model on
synthetic data, the same step kiln runs (forward, cross-entropy, backward, SGD momentum 0.9).

    python benches/peers/train_step.py --arch resnet18 --batch-size 16 --image-size 64 \
        --steps 10 --threads 2 [--device cuda]

Prints one JSON line: {"engine": "pytorch", "arch", "batch_size", "image_size", "threads",
"median_images_per_s", "median_step_ms", "times_ms", "peak_rss_mb"}.
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dev = torch.device(a.device)
    model = getattr(torchvision.models, a.arch)(num_classes=a.num_classes).train().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    y = torch.randint(0, a.num_classes, (a.batch_size,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i >= a.warmup:
            times.append((time.perf_counter() - t) * 1000)
    step_ms = statistics.median(times)
    print(json.dumps({
        "engine": "pytorch", "device": a.device, "arch": a.arch, "batch_size": a.batch_size,
        "image_size": a.image_size, "threads": a.threads,
        "median_images_per_s": a.batch_size / step_ms * 1000, "median_step_ms": step_ms,
        "times_ms": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
