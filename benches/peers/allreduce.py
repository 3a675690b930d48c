"""PyTorch's peer of `kiln bench allreduce`: torch.distributed all_reduce with the gloo backend
(its CPU ring) between local processes, median time and nccl-tests' bandwidths, one JSON line.

    python benches/peers/allreduce.py --nproc 2 --size-mb 64 --iters 10
"""

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, args, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.nproc))
    dist.init_process_group("gloo", rank=rank, world_size=args.nproc)
    n = int(args.size_mb * (1 << 20) / 4)
    data = (torch.arange(n, dtype=torch.float32) % 1000)
    if args.fp16:
        data = data.half()
    times = []
    for i in range(args.iters + 2):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(data)
        data /= args.nproc
        if i >= 2:
            times.append((time.perf_counter() - t) * 1e3)
    if rank == 0:
        queue.put(times)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--size-mb", type=float, default=64.0)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(worker, args=(args, port, queue), nprocs=args.nproc, join=True)
    times = queue.get()
    ms = statistics.median(times)
    n = args.nproc
    algbw = args.size_mb * (1 << 20) / (ms / 1e3) / 1e9
    print(json.dumps({
        "engine": "torch-gloo", "ranks": n, "size_mb": args.size_mb, "fp16": args.fp16,
        "median_ms": ms, "algbw_gb_s": algbw, "busbw_gb_s": algbw * 2 * (n - 1) / n,
        "times_ms": times,
    }))


if __name__ == "__main__":
    main()
