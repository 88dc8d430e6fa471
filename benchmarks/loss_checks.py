"""What ``G2DLoss``'s input checks cost per call, on the CPU at the CLI's batch (16 rows, k = 2 modalities).

Two losses are timed interleaved (round r times each in turn, so a busy machine slows them alike): the
public ``G2DLoss`` (checks every call) and the same loss with ``check`` skipped, for the loss call alone
and for the call plus its backward; ``check`` called by itself; and a whole training step of the
smallest model the CLI trains (mfeat's demo: an MLP encoder of 128 per view for pix [240] and mor [6],
late fusion, SGD), where the checks' share is largest. Each figure is the fastest and the
median round's time per call, in CPU time of the calling thread (``time.thread_time``; torch runs on
that thread with ``--threads 1``), so time the machine spends on other processes is not counted.

    python benchmarks/loss_checks.py [--rounds 15] [--calls 200] [--threads 1] [--dim 128] [--classes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from g2d.core.losses import G2DLoss


class UncheckedLoss(G2DLoss):
    """``G2DLoss`` without its checks: the loss as it was computed before they existed."""

    def check(self, logits, targets, features, teacher_logits, teacher_features):  # noqa: ANN001, ANN201
        return targets


def inputs(batch: int, dim: int, classes: int, modalities: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    names = [f"m{i}" for i in range(modalities)]
    return {
        "logits": torch.randn(batch, classes, generator=generator, requires_grad=True),
        "targets": torch.randint(0, classes, (batch,), generator=generator),
        "features": {m: torch.randn(batch, dim, generator=generator, requires_grad=True) for m in names},
        "teacher_logits": {m: torch.randn(batch, classes, generator=generator) for m in names},
        "teacher_features": {m: torch.randn(batch, dim, generator=generator) for m in names},
    }


def seconds_per_call(loss: G2DLoss, given: dict, calls: int, backward: bool | None) -> float:
    """One round; ``backward=None`` times ``loss.check`` alone."""
    start = time.thread_time()
    for _ in range(calls):
        if backward is None:
            loss.check(**given)
            continue
        total, _ = loss(**given)
        if backward:
            total.backward()
    return (time.thread_time() - start) / calls


class MfeatStep:
    """One SGD step of the mfeat demo's student (MLP encoders of 128, a linear head per view, mean of their
    logits) with the G²D loss against fixed teacher outputs."""

    def __init__(self, batch: int, classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        dims = {"pix": 240, "mor": 6}
        self.encoders = torch.nn.ModuleDict({m: torch.nn.Sequential(torch.nn.Linear(d, 128), torch.nn.ReLU())
                                             for m, d in dims.items()})
        self.heads = torch.nn.ModuleDict({m: torch.nn.Linear(128, classes) for m in dims})
        self.optimizer = torch.optim.SGD([*self.encoders.parameters(), *self.heads.parameters()], lr=0.01,
                                         momentum=0.9, weight_decay=1e-4)
        self.inputs = {m: torch.randn(batch, d, generator=generator) for m, d in dims.items()}
        self.targets = torch.randint(0, classes, (batch,), generator=generator)
        self.teacher_features = {m: torch.randn(batch, 128, generator=generator) for m in dims}
        self.teacher_logits = {m: torch.randn(batch, classes, generator=generator) for m in dims}

    def __call__(self, loss: G2DLoss) -> None:
        features = {m: encoder(self.inputs[m]) for m, encoder in self.encoders.items()}
        logits = torch.stack([self.heads[m](f) for m, f in features.items()]).mean(dim=0)
        total, _ = loss(logits=logits, targets=self.targets, features=features, teacher_logits=self.teacher_logits,
                        teacher_features=self.teacher_features)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def seconds_per_step(step: MfeatStep, loss: G2DLoss, calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        step(loss)
    return (time.thread_time() - start) / calls


def summary(values: list[float]) -> dict[str, float]:
    return {"fastest_us": round(min(values) * 1e6, 1), "median_us": round(statistics.median(values) * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--modalities", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128, help="feature width D")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    given = inputs(args.batch, args.dim, args.classes, args.modalities)
    losses = {"checked": G2DLoss(), "unchecked": UncheckedLoss()}
    result = {"load_before": os.getloadavg()[0], "torch": torch.__version__, "threads": args.threads,
              "batch": args.batch, "modalities": args.modalities, "dim": args.dim, "classes": args.classes}
    for backward in (False, True):
        times: dict[str, list[float]] = {name: [] for name in losses}
        for name, loss in losses.items():  # warm-up
            seconds_per_call(loss, given, args.calls // 4, backward)
        for _ in range(args.rounds):
            for name, loss in losses.items():
                times[name].append(seconds_per_call(loss, given, args.calls, backward))
        result["loss_and_backward" if backward else "loss"] = {name: summary(values) for name, values in times.items()}
    step = MfeatStep(args.batch, args.classes)
    steps: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(args.rounds):
        for name, loss in losses.items():
            steps[name].append(seconds_per_step(step, loss, args.calls))
    result["mfeat_step"] = {name: summary(values) for name, values in steps.items()}
    result["check_alone"] = summary([seconds_per_call(losses["checked"], given, args.calls, None)
                                     for _ in range(args.rounds)])
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
