"""Load kiln-saved weights into torchvision with strict key checking.

    python benches/peers/load_in_torchvision.py ARCH FILE.safetensors [ARCH FILE ...]

The class count is read off the classifier's shape. Prints one line per file and exits 1 if
any load reports missing or unexpected keys.
"""

import sys

import safetensors.torch
import torchvision


def main(args):
    ok = True
    for arch, path in zip(args[::2], args[1::2]):
        sd = safetensors.torch.load_file(path)
        head = "classifier.weight" if arch.startswith("densenet") else "fc.weight"
        model = getattr(torchvision.models, arch)(num_classes=sd[head].shape[0])
        result = model.load_state_dict(sd, strict=False)
        good = not result.missing_keys and not result.unexpected_keys
        ok &= good
        print(f"{arch:18} {path}: {len(sd)} tensors, missing {result.missing_keys[:3]}, "
              f"unexpected {result.unexpected_keys[:3]} -> {'OK' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
