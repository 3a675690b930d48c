"""PyTorch peer of `kiln train` for the real-data comparison: torchvision resnet18 from scratch
on an image folder (DIR/train, DIR/val), the same recipe as kiln's flags:
SGD (momentum, weight decay), cosine schedule stepped per epoch, `--augment flip`
(Resize(size*256/224) + CenterCrop(size) + RandomHorizontalFlip), ImageNet mean/std, the same
threads. Prints one line per epoch and a JSON summary.

    python benches/peers/train_fashion.py --data /tmp/fmnist --epochs 3 --batch-size 64 \
        --lr 0.05 --weight-decay 5e-4 --image-size 32 --threads 2 --workers 2
"""

import argparse
import json
import math
import time

import torch
import torchvision
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    size = args.image_size
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    resize = round(size * 256 / 224)
    train_tf = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(size),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    val_tf = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), norm])
    rgb = lambda p: torchvision.datasets.folder.default_loader(p)
    train = torchvision.datasets.ImageFolder(f"{args.data}/train", train_tf, loader=rgb)
    val = torchvision.datasets.ImageFolder(f"{args.data}/val", val_tf, loader=rgb)
    train_dl = torch.utils.data.DataLoader(train, args.batch_size, shuffle=True,
                                           num_workers=args.workers, drop_last=False)
    val_dl = torch.utils.data.DataLoader(val, args.batch_size, num_workers=args.workers)
    model = getattr(torchvision.models, args.arch)(num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for x, y in train_dl:
            opt.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        train_s = time.perf_counter() - t0
        model.eval()
        vseen, vloss, vcorrect = 0, 0.0, 0
        with torch.no_grad():
            for x, y in val_dl:
                logits = model(x)
                vloss += loss_fn(logits, y).item() * len(y)
                vcorrect += (logits.argmax(1) == y).sum().item()
                vseen += len(y)
        m = {
            "epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen,
            "train_acc": correct / seen, "val_loss": vloss / vseen, "val_acc": vcorrect / vseen,
            "images_per_s": seen / train_s, "epoch_time_s": time.perf_counter() - t0,
        }
        history.append(m)
        print(f"epoch {m['epoch']}/{args.epochs} train loss {m['train_loss']:.4f} acc "
              f"{m['train_acc']:.4f} | val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f} | "
              f"{m['images_per_s']:.1f} img/s, {m['epoch_time_s']:.0f} s", flush=True)
    best = max(history, key=lambda m: m["val_acc"])
    print(json.dumps({"wall_s": time.perf_counter() - start, "best": best, "last": history[-1]}))


if __name__ == "__main__":
    main()
