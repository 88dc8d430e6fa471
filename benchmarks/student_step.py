"""Student-step throughput of G²D with SMP: the reference path against the fast path.

For AV-MNIST shapes (audio 1x112x112 + image 1x28x28, uint8) and CREMA-D shapes (audio
spectrogram 1x257x188 float32 + one 3x224x224 uint8 frame), with k = 2 modalities and k = 3
(a second copy of the last modality's shape), at each batch size, it trains a ResNet-18
student with G²D and ranked SMP (first phase, so modulation acts) against frozen ResNet-18
teachers, through the same ``prepare_training`` and ``TrainingPath`` that ``fit`` uses, and
prints samples/s with the data feed included (batches gathered, moved, converted), the
one-time setup (teacher cache), and the peak GPU memory. Data are random: throughput does
not depend on the values.

On a GPU it then checks the CUDA graph capture: the same steps, across an SMP phase change
(which recaptures), run captured and eagerly must give the same losses and weights.

    python benchmarks/student_step.py                          # everything; step counts sized for the device
    python benchmarks/student_step.py --steps 100 --warmup 10  # longer timing
    python benchmarks/student_step.py --shapes avmnist --modalities 2 --batch-sizes 16 --profile  # + top operators
    python benchmarks/student_step.py --profile-only           # only the top operators, per shape, batch 16
    OMP_WAIT_POLICY=PASSIVE python benchmarks/student_step.py --shapes avmnist --modalities 2 --batch-sizes 16 \
        --paths reference fast-fp32 fast-bf16 --repeats 5 --warmup 3 --steps 4   # the CPU's paths, issue 35

On the CPU, set ``OMP_WAIT_POLICY=PASSIVE`` as ``import g2d`` does (this script imports torch
first): with OpenMP's default spinning, a loaded machine collapses multi-threaded steps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from g2d.config import load_config
from g2d.core.smp import Modulator
from g2d.data.base import Batches, ModalitySpec, MultimodalData
from g2d.methods import build_method
from g2d.models.multimodal import MultimodalModel
from g2d.training import engine, fast
from g2d.training.engine import TeacherEnsemble, prepare_training
from g2d.training.teachers import teacher_model_config

# name -> (classes, [(modality, shape, dtype), ...]); k = 3 repeats the last entry's shape.
SHAPES = {
    "avmnist": (10, [("audio", (1, 112, 112), torch.uint8), ("image", (1, 28, 28), torch.uint8)]),
    "cremad": (6, [("audio", (1, 257, 188), torch.float32), ("visual", (3, 224, 224), torch.uint8)]),
}
EPOCHS = 300  # SMP's default window is the first half, so epoch 0 is modulated
# Graph check: bf16 runs of the same kernels; cuDNN may autotune to other algorithms in the
# two runs, so they agree to bf16 rounding compounded over the steps, not bit for bit.
CHECK_RTOL = 5e-2


CHANNELS_LAST = "channels_last"  # a benchmark-only switch: channels_last on any path (CUDA and CPU bf16 have it already)
PATHS = {
    "reference": ["trainer.reference=true"],
    "fast": ["trainer.fast=true"],
    "fast-fp32": ["trainer.fast=true", "trainer.precision=fp32"],
    "fast-bf16": ["trainer.fast=true", "trainer.precision=bf16"],
    "fast-bf16-channels-last": ["trainer.fast=true", "trainer.precision=bf16", CHANNELS_LAST],
    "fast-fp32-channels-last": ["trainer.fast=true", "trainer.precision=fp32", CHANNELS_LAST],
}


@contextlib.contextmanager
def channels_last_plan(on: bool) -> Iterator[None]:
    """While building, plans switch on channels_last weights and image inputs (CUDA and CPU bf16 do already)."""
    if not on:
        yield
        return
    original = fast.plan_training

    def planned(*args, **kwargs):
        plan = original(*args, **kwargs)
        plan.channels_last = True
        return plan

    engine.plan_training = planned
    try:
        yield
    finally:
        engine.plan_training = original


@dataclass
class Setting:
    shape: str
    k: int
    batch: int


def synthetic_data(shape: str, k: int, rows: int, seed: int = 0) -> MultimodalData:
    classes, entries = SHAPES[shape]
    entries = list(entries) + [(f"{entries[-1][0]}{i}", entries[-1][1], entries[-1][2]) for i in range(2, k)]
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, dims, dtype in entries:
            if dtype == torch.uint8:
                tensors[name] = torch.randint(0, 256, (n, *dims), generator=generator, dtype=torch.uint8)
            else:
                tensors[name] = torch.randn((n, *dims), generator=generator, dtype=dtype)
        tensors["label"] = torch.randint(0, classes, (n,), generator=generator)
        return tensors

    return MultimodalData(
        name=f"synthetic-{shape}", task="classification", num_classes=classes,
        modalities={name: ModalitySpec("image", dims, 1 / 255 if dtype == torch.uint8 else 1.0)
                    for name, dims, dtype in entries},
        splits={"train": split(rows), "val": split(1), "test": split(1)},
    )


def build(data: MultimodalData, width: int, batch: int, overrides: list[str]):
    """Model, teachers, G²D and ranked SMP, prepared exactly as ``fit`` prepares them."""
    config = load_config(None, ["model.encoder.name=resnet18", f"model.encoder.width={width}", "method.name=g2d",
                                "smp.schedule=ranked", f"trainer.epochs={EPOCHS}", f"trainer.batch_size={batch}",
                                "trainer.eval_batch_size=256", *overrides])
    torch.manual_seed(0)
    modalities = list(data.modalities)
    teachers = TeacherEnsemble({m: MultimodalModel({m: data.modalities[m]}, teacher_model_config(config, m),
                                                   data.num_classes) for m in modalities})
    model = MultimodalModel(data.modalities, config.model, data.num_classes)
    method = build_method(config.method, data.task, modalities)
    modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in modalities}, EPOCHS)
    modulator.set_dataset_confidence(torch.linspace(0.3, 0.6, len(modalities)))
    batches = Batches(data.splits["train"], batch, shuffle=True, seed=0, drop_last=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    optimizer, path = prepare_training(model, method, data, config, device, batches, teachers, modulator)
    model.train()
    return model, path, modulator


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(data: MultimodalData, setting: Setting, overrides: list[str], width: int, warmup: int, steps: int) -> dict:
    """samples/s over ``steps`` steps after ``warmup`` (fit's loop: feed, step, device-side sums)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    layout = CHANNELS_LAST in overrides
    with channels_last_plan(layout):
        model, path, _ = build(data, width, setting.batch, [o for o in overrides if o != CHANNELS_LAST])
    synchronize()
    setup = time.perf_counter() - started
    sums: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(path.batches(0)):
        if index == warmup:
            synchronize()
            started = time.perf_counter()
        for name, value in path.step(batch, 0).items():
            sums[name] = sums.get(name, 0.0) + value.float() * setting.batch
    final = {name: value.item() / (steps * setting.batch) for name, value in sums.items()}  # one read, as fit does
    synchronize()
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    result = {"samples_per_s": steps * setting.batch / elapsed, "setup_s": setup, "peak_gib": peak,
              "path": path.summary(), "loss": final.get("loss")}
    del model, path
    gc.collect()
    return result


def check_graph(width: int, steps: int = 12) -> str:
    """Captured against eager fast steps on the same batches, across an SMP phase change."""
    data = synthetic_data("avmnist", 2, 16 * steps)
    runs = {}
    for name, overrides in (("graph", ["trainer.fast=true"]), ("eager", ["trainer.fast=true", "trainer.cuda_graph=false"])):
        model, path, modulator = build(data, width, 16, overrides)
        losses = []
        for index, batch in enumerate(path.batches(0)):
            epoch = 0 if index < steps // 2 else modulator.window  # the joint phase from half-way
            losses.append(path.step(batch, epoch)["loss"].clone())
        runs[name] = (torch.stack(losses).cpu(), [p.detach().float().cpu() for p in model.parameters()], path)
    graph_losses, graph_params, graph_path = runs["graph"]
    eager_losses, eager_params, _ = runs["eager"]
    loss_diff = ((graph_losses - eager_losses).abs() / eager_losses.abs()).max().item()
    param_diff = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(graph_params, eager_params))
    graphed = graph_path.graphed
    captures, failed = (graphed.captures, graphed.failed) if graphed is not None else (0, "no CUDA graph path")
    ok = failed is None and captures == 2 and loss_diff <= CHECK_RTOL and param_diff <= CHECK_RTOL
    return (f"graph check ({steps} steps, batch 16, SMP phase change at step {steps // 2}): {captures} captures "
            f"(expected 2){'' if failed is None else f', failed: {failed}'}; max relative difference to eager: "
            f"loss {loss_diff:.2e}, weights {param_diff:.2e} (tolerance {CHECK_RTOL:g}): {'OK' if ok else 'FAIL'}")


def profile(width: int, shape: str, batch: int, steps: int) -> str:
    """Where the fast path's time goes, per operator (eager, so each kernel shows), k = 2."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiler

    data = synthetic_data(shape, 2, batch * (steps + 3))
    model, path, _ = build(data, width, batch, ["trainer.fast=true", "trainer.cuda_graph=false"])
    iterator = path.batches(0)
    for _ in range(3):
        path.step(next(iterator), 0)
    synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with run_profiler(activities=activities) as prof:
        for batch_ in iterator:
            path.step(batch_, 0)
        synchronize()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--modalities", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 is the paper's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 8 on GPU, 1 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on GPU, 2 on CPU)")
    parser.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=list(PATHS),
                        help="fast = the fast path at --precision; the others fix their precision (CPU "
                             "channels_last: the conv layout CUDA runs use, tried on the CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats per setting; the median is kept")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="the fast path's")
    parser.add_argument("--no-check", action="store_true", help="skip the CUDA graph check")
    parser.add_argument("--profile-only", action="store_true", help="no throughput grid: only the --profile tables")
    parser.add_argument("--profile", action="store_true",
                        help="print the fast path's top operators per shape (k=2, batch 16 or the smallest asked for)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    warmup = args.warmup if args.warmup is not None else (8 if cuda else 1)
    steps = args.steps if args.steps is not None else (50 if cuda else 2)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}; python {platform.python_version()}; ResNet-18 width "
          f"{args.width}; G²D + ranked SMP (first phase); {warmup} warm-up + {steps} timed steps", flush=True)
    overrides = {path: [*extra, f"trainer.precision={args.precision}"] if path == "fast" else extra
                 for path, extra in PATHS.items()}
    profile_batch = 16 if 16 in args.batch_sizes else min(args.batch_sizes)
    if args.profile_only:
        args.batch_sizes, args.no_check, args.profile = [], True, True
    rows, records = [], []
    # Smallest batches first (the throughput targets are at batch 16), and the JSON rewritten
    # after every setting, so a run stopped by a time limit keeps what it measured.
    for batch in args.batch_sizes:
        for shape in args.shapes:
            for k in args.modalities:
                setting = Setting(shape, k, batch)
                data = synthetic_data(shape, k, batch * (warmup + steps))
                runs = {p: [] for p in args.paths}
                for _ in range(args.repeats):  # interleaved, so the machine's load drifts across every path
                    for p in args.paths:
                        runs[p].append(measure(data, setting, overrides[p], args.width, warmup, steps))
                found = {p: sorted(r, key=lambda x: x["samples_per_s"])[len(r) // 2] for p, r in runs.items()}
                records.append({"shape": shape, "k": k, "batch": batch, **found})
                cells = [f"{found[p]['samples_per_s']:.1f}" for p in args.paths]
                if "reference" in found:
                    cells += [f"{found[p]['samples_per_s'] / found['reference']['samples_per_s']:.2f}x"
                              for p in args.paths if p != "reference"]
                cells += [f"{found[p]['setup_s']:.1f}" for p in args.paths]
                if cuda:
                    cells += [f"{found[p]['peak_gib']:.2f}" for p in args.paths]
                rows.append(f"| {shape} | {k} | {batch} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
                del data
                if args.json:
                    with open(args.json, "w") as handle:
                        json.dump({"device": device, "torch": torch.__version__, "width": args.width,
                                   "warmup": warmup, "steps": steps, "results": records}, handle, indent=2)
    header = [f"{p} samples/s" for p in args.paths]
    header += [f"{p} / reference" for p in args.paths if p != "reference"] if "reference" in args.paths else []
    header += [f"{p} setup s" for p in args.paths] + ([f"{p} peak GiB" for p in args.paths] if cuda else [])
    if rows:
        print()
        print("| shapes | k | batch | " + " | ".join(header) + " |")
        print("|" + " --- |" * (3 + len(header)))
        print("\n".join(rows))
    for p in args.paths if records else []:
        if p != "reference":
            print(f"\n{p}: {json.dumps(records[0][p]['path'])}")
    if cuda and not args.no_check:
        print(check_graph(args.width))
    if args.profile:
        for shape in args.shapes:
            print(f"\nprofile: {shape} shapes, k=2, batch {profile_batch}, fast path eager, {10 if cuda else 2} steps",
                  flush=True)
            print(profile(args.width, shape, profile_batch, 10 if cuda else 2), flush=True)


if __name__ == "__main__":
    main()
