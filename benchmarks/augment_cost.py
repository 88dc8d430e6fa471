"""Cost of ``dataset.augment`` and ``dataset.normalize`` per training batch and per epoch, at CREMA-D's shape.

One batch is what the paper's CREMA-D config trains on: 16 clips of 3 frames of 3 x 224 x 224, stored
as uint8. Three variants of turning it into the model's input are timed interleaved (round r times each
once, in turn, so a busy machine slows them alike): the plain conversion (``to_device``: float, 1/255),
the same with ImageNet standardisation, and that followed by the random resized crop and flip. The
augmentation's cost is the difference to the plain conversion; per epoch it is that times the number of
steps of a CREMA-D epoch (6,698 training clips at batch 16: 419 steps, docs/datasets.md).

    python benchmarks/augment_cost.py [--device cpu|cuda] [--threads 1] [--rounds 7] [--batches 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from g2d.data.augment import Augmenter, normalize_visual
from g2d.data.base import ModalitySpec, MultimodalData, to_device

CREMAD_STEPS = 419  # ceil(6698 / 16)


def clip_data(frames: int, size: int) -> MultimodalData:
    """A stand-in dataset whose only modality is CREMA-D's stored video (one row per split: only specs are read)."""
    spec = ModalitySpec("video", (frames, 3, size, size), scale=1 / 255)
    row = {"video": torch.zeros(1, frames, 3, size, size, dtype=torch.uint8), "label": torch.zeros(1, dtype=torch.long)}
    return MultimodalData(name="cremad-shape", task="classification", num_classes=6, modalities={"video": spec},
                          splits={split: dict(row) for split in ("train", "val", "test")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=5, help="batches per variant and round")
    parser.add_argument("--json", help="also write the medians here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plain, normalized = clip_data(args.frames, args.size), normalize_visual(clip_data(args.frames, args.size))
    augmenter = Augmenter(normalized.modalities, seed=0)
    batch = {"video": torch.randint(0, 256, (args.batch, args.frames, 3, args.size, args.size), dtype=torch.uint8)}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    variants = {
        "to_device (float, 1/255)": lambda step: to_device(batch, plain, device),
        "+ normalize": lambda step: to_device(batch, normalized, device),
        "+ normalize + crop/flip": lambda step: augmenter(to_device(batch, normalized, device), 0, step),
    }
    for variant in variants.values():  # warm-up: allocations, kernels
        variant(0)
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, variant in variants.items():
            started = time.perf_counter()
            for step in range(args.batches):
                variant(round_ * args.batches + step)
            sync()
            seconds[name].append((time.perf_counter() - started) / args.batches)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    base = medians["to_device (float, 1/255)"]
    print(f"batch {args.batch} x {args.frames} frames x 3 x {args.size} x {args.size} uint8 on {device} "
          f"({args.threads} thread(s)); median of {args.rounds} interleaved rounds of {args.batches} batches; "
          f"load before: {os.getloadavg()[0]:.1f}")
    for name, value in medians.items():
        extra = value - base
        print(f"{name:28s} {1000 * value:9.1f} ms/batch  (min {1000 * min(seconds[name]):.1f}, "
              f"max {1000 * max(seconds[name]):.1f}); over the plain conversion {1000 * extra:+8.1f} ms/batch, "
              f"{extra * CREMAD_STEPS:+7.1f} s per CREMA-D epoch ({CREMAD_STEPS} steps)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": str(device), "threads": args.threads, "batch": args.batch, "frames": args.frames,
                       "size": args.size, "seconds_per_batch": medians}, handle, indent=2)


if __name__ == "__main__":
    main()
