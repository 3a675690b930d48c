"""PyTorch peer of `kiln bench data DIR`: torchvision `ImageFolder` + `DataLoader` with the
training transform kiln uses (RandomResizedCrop, flip, ToTensor, Normalize), the same image
size, batch size and worker count; one pass over the folder.

    python benches/peers/data_loader.py DIR/train --image-size 32 --batch-size 16 --workers 2

Prints one JSON line: {"engine": "torchvision", "images", "seconds", "images_per_s",
"peak_rss_mb"}.
"""

import argparse
import json
import resource
import time

import torch
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    t = transforms.Compose([
        transforms.RandomResizedCrop(a.image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(a.dir, transform=t)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True,
                                     num_workers=a.workers)
    start = time.perf_counter()
    n = 0
    for x, _ in dl:
        n += x.shape[0]
    secs = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"engine": "torchvision", "images": n, "seconds": secs,
                      "images_per_s": n / secs, "peak_rss_mb": (rss + rss_children) / 1024}))


if __name__ == "__main__":
    main()
