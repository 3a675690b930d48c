"""PyTorch peer of `kiln bench train`: full SGD training steps of a torchvision model on
synthetic data, the same step kiln runs (forward, cross-entropy, backward, SGD momentum 0.9).

    python benches/peers/train_step.py --arch resnet18 --batch-size 16 --image-size 64 \
        --steps 10 --threads 2 [--device cuda [--amp | --precision f32|tf32|bf16|f16]]

On CUDA, as PyTorch users train there: channels_last (unless --no-channels-last), and with
--amp (= --precision bf16) or --precision f16 torch.autocast, plus a GradScaler for f16.
`f32` turns TF32 off; `tf32` on.

Prints one JSON line: {"engine": "pytorch", "device", "precision", "arch", "batch_size",
"image_size", "threads", "median_images_per_s", "median_step_ms", "times_ms", "peak_rss_mb",
"peak_gpu_mb"}.
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
    p.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16", "f16"])
    p.add_argument("--amp", action="store_true", help="mixed precision: --precision bf16")
    p.add_argument("--no-channels-last", action="store_true")
    a = p.parse_args()
    if a.amp:
        a.precision = "bf16"
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = a.precision != "f32"
        torch.backends.cudnn.allow_tf32 = a.precision != "f32"
        torch.backends.cudnn.benchmark = True
    low = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.precision)
    model = getattr(torchvision.models, a.arch)(num_classes=a.num_classes).train().to(dev)
    memory_format = torch.channels_last if cuda and not a.no_channels_last else None
    if memory_format:
        model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    if memory_format:
        x = x.to(memory_format=memory_format)
    y = torch.randint(0, a.num_classes, (a.batch_size,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "f16")
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()
        if i >= a.warmup:
            times.append((time.perf_counter() - t) * 1000)
    step_ms = statistics.median(times)
    print(json.dumps({
        "engine": "pytorch", "device": a.device, "precision": a.precision, "arch": a.arch, "batch_size": a.batch_size,
        "image_size": a.image_size, "threads": a.threads,
        "median_images_per_s": a.batch_size / step_ms * 1000, "median_step_ms": step_ms,
        "times_ms": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }))


if __name__ == "__main__":
    main()
