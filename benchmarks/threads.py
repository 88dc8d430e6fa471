"""Training steps/s by thread count and OpenMP wait policy, idle and beside busy processes.

Each setting runs in a fresh process (OpenMP reads ``OMP_WAIT_POLICY`` when torch loads), timing
``--steps`` training steps of one model after a warm-up, alone and beside ``--busy`` processes
that spin on the CPU; settings are interleaved so the machine's own load drifts across all of them:

- ``mlp``: the demo's student (two mfeat views, 240- and 6-dim, one 128-unit layer each, late fusion, batch 16);
- ``resnet8`` / ``resnet64``: the G²D + SMP student step of benchmarks/student_step.py (AV-MNIST shapes,
  ResNet-18 width 8 / 64, batch 16, reference path).

    python benchmarks/threads.py                       # every model, threads 1 and every core, both policies
    python benchmarks/threads.py --models mlp --short  # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSY = "while True: pass"


def child(model: str, steps: int, threads: int | None) -> None:
    """Time ``steps`` steps of ``model`` in this process; prints one JSON line."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if model == "mlp":
        torch.manual_seed(0)
        nets = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(d, 128), torch.nn.ReLU()) for d in (240, 6)])
        head = torch.nn.Linear(256, 10)
        optimizer = torch.optim.SGD([*nets.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
        xs, y = [torch.randn(16, 240), torch.randn(16, 6)], torch.randint(0, 10, (16,))

        def step() -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(torch.cat([n(x) for n, x in zip(nets, xs)], 1)), y).backward()
            optimizer.step()
    else:
        sys.path.insert(0, str(HERE))
        from student_step import build, synthetic_data

        data = synthetic_data("avmnist", 2, 16 * (steps + 3))
        _, path, _ = build(data, int(model.removeprefix("resnet")), 16, ["trainer.reference=true"])
        batches = iter(path.batches(0))

        def step() -> None:
            path.step(next(batches), 0)
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - started), "threads": torch.get_num_threads()}))


def measure(model: str, steps: int, threads: int, policy: str, busy: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", model, "--steps", str(steps), "--threads", str(threads)],
                             env=env, capture_output=True, text=True, check=True).stdout
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(out.strip().splitlines()[-1])["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet8", "resnet64"])
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--policies", nargs="+", default=["default", "passive"], choices=["default", "passive", "active"])
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1], help="busy processes beside the run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--short", action="store_true", help="fewer steps, one repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.threads[0])
        return
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores; load {load:.1f} before (1-minute average); interleaved, {args.repeats} repeat(s)",
          flush=True)
    results: dict[tuple, list[float]] = {}
    repeats = 1 if args.short else args.repeats
    for _ in range(repeats):
        for model, busy, threads, policy in itertools.product(args.models, args.busy, args.threads, args.policies):
            steps = args.steps or {"mlp": 2000, "resnet8": 30, "resnet64": 6}.get(model, 10) // (4 if args.short else 1)
            value = measure(model, steps, threads, policy, busy)
            results.setdefault((model, busy, threads, policy), []).append(value)
            print(f"{model} busy={busy} threads={threads} policy={policy}: {value:.1f} steps/s", flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} after; steps/s (median of repeats) and ratio to the best idle setting")
    print("| model | busy processes | threads | OMP_WAIT_POLICY | steps/s | vs best idle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        best = max(sorted(v)[len(v) // 2] for k, v in results.items() if k[0] == model and k[1] == 0) \
            if 0 in args.busy else None
        for (m, busy, threads, policy), values in results.items():
            if m != model:
                continue
            median = sorted(values)[len(values) // 2]
            ratio = f"{median / best:.2f}" if best else "-"
            print(f"| {model} | {busy} | {threads} | {policy} | {median:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
