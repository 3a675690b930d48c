#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs under fuzz/seeds/<target>/ (standard library only).

The `.pth` target also takes the torch.save files in models/tests/fixtures/ as seeds.
"""
import gzip
import json
import struct
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "seeds"


def write(target, name, data):
    path = SEEDS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def f16(x):
    return struct.pack("<e", x)


def bf16(x):
    return struct.pack("<f", x)[2:]


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, element bytes function)."""
    header, blobs, offset = {}, [], 0
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8}
    pack = {
        "F32": lambda x: struct.pack("<f", x),
        "F16": f16,
        "BF16": bf16,
        "F64": lambda x: struct.pack("<d", x),
        "I64": lambda x: struct.pack("<q", int(x)),
    }
    for name, (dtype, shape) in tensors.items():
        count = 1
        for d in shape:
            count *= d
        blob = b"".join(pack[dtype]((i % 7) / 7.0) for i in range(count))
        assert len(blob) == count * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def bn(prefix, n, dtype):
    return {
        f"{prefix}.{k}": (dtype, [n]) for k in ["weight", "bias", "running_mean", "running_var"]
    }


def main():
    # safetensors against resnet18 (10 classes): a batch norm in each float dtype, the
    # classifier, a counter torchvision keeps, and metadata.
    for dtype in ["F32", "F16", "BF16", "F64"]:
        write("safetensors", f"bn1_{dtype.lower()}.safetensors", safetensors(bn("bn1", 64, dtype)))
    head = {"fc.weight": ("F32", [10, 512]), "fc.bias": ("F32", [10])}
    write("safetensors", "classifier.safetensors", safetensors(head, {"format": "pt"}))
    tiny = {"fc.weight": ("F32", [1, 1]), "fc.bias": ("F32", [1])}
    write("safetensors", "classifier_1x1.safetensors", safetensors(tiny))
    counted = dict(bn("layer1.0.bn1", 64, "F32"))
    counted["layer1.0.bn1.num_batches_tracked"] = ("I64", [])
    write("safetensors", "counted.safetensors", safetensors(counted))

    # kiln.json
    info = {
        "arch": "resnet18",
        "classes": ["Ankle_boot", "Bag", "Coat"],
        "image_size": 32,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    write("kiln_json", "valid.json", json.dumps(info, indent=2))
    write("kiln_json", "densenet.json", json.dumps({**info, "arch": "densenet121", "image_size": 8}))

    # job files
    write(
        "job_file",
        "train.toml",
        'name = "mini"\nexperiment = "fashion"\n[train]\ndata = "data"\nepochs = 2\n'
        'arch = "resnet18"\nbatch_size = 8\nimage_size = 32\nlr = 0.01\n',
    )
    write(
        "job_file",
        "script.toml",
        'name = "script"\nsource_directory = "."\nentry_script = "job.toml"\n'
        'script_params = { "--lr" = "0.1", "--epochs" = "3" }\n'
        'node_count = 2\nprocess_count_per_node = 2\n[environment]\nFOO = "bar"\n',
    )
    write("job_file", "mpi.toml", 'name = "mpi"\ncompute_target = "mpi"\nprocess_count_per_node = 4\n')

    # IDX: flags byte (bit 0: gzip), the cut between the images and labels files (2 bytes),
    # then images [count, rows, cols] and labels [count].
    def idx(dims, values):
        return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(values)

    images = idx([3, 2, 3], range(18))
    labels = idx([3], [0, 9, 4])
    for flags in [0, 1]:
        write("idx", f"three_{flags}.bin", bytes([flags]) + struct.pack(">H", len(images)) + images + labels)

    # metrics.jsonl, as the trainer and `kiln log-metric` write it.
    lines = [
        {"run": "r1", "rank": 0, "epoch": 1, "step": 10, "split": "train", "name": "loss", "value": 2.25, "time": 1764000000.5},
        {"rank": 0, "epoch": 1, "split": "val", "name": "acc", "value": 0.5},
        {"name": "x", "value": "inf"},
        {"name": "y", "value": "-inf", "step": -3},
        {"name": "z", "value": None},
    ]
    write("metrics_jsonl", "records.jsonl", "".join(json.dumps(l) + "\n" for l in lines) + '{"name": "partial"')


if __name__ == "__main__":
    main()
