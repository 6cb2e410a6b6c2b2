# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Network-call time with glibc's default allocator settings against ``keep_freed_memory``, in fresh processes.

One call = preset B at 256x256, 4 slices x 2 members (the bundle's default batch), bfloat16 autocast,
channels-last; each process times 10 calls after 2 warm-up calls. Processes alternate default / keep.

Usage::

    python benchmarks/malloc_ab.py [--pairs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CHILD = "child"


def child(mode: str) -> float:
    import torch

    from medsegdiff_monai.networks.nets import MedSegDiffUNet
    from medsegdiff_monai.utils import keep_freed_memory

    if mode == "keep" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() is not available here (not glibc)")
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("B", in_channels=4, out_channels=1, image_size=[256, 256]).eval()
    x = torch.randn(8, 1, 256, 256).contiguous(memory_format=torch.channels_last)
    image = torch.randn(4, 4, 256, 256).contiguous(memory_format=torch.channels_last)
    t = torch.full((8,), 500)

    def call() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(x, t, context=image, context_repeats=2)

    call()
    call()
    start = time.perf_counter()
    for _ in range(10):
        call()
    return (time.perf_counter() - start) / 10


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        print(child(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from speed_harness import cpu_model

    print(f"{cpu_model()}; seconds per network call")
    for _ in range(args.pairs):
        for mode in ("default", "keep"):
            out = subprocess.run([sys.executable, __file__, CHILD, mode], capture_output=True, text=True, check=True)
            print(f"{mode:>8}: {float(out.stdout.strip().splitlines()[-1]):.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
