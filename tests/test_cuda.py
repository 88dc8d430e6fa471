"""The fast path on a real GPU (issue 11): ``pytest -m cuda``, run by ``benchmarks/gpu_check.sh``.

Skipped without CUDA, so CI stays green. On a GPU, for every method: the fast path against the
reference on the same batches, step by step from the same state, across an SMP phase change and
a learning-rate step (``tests/path_compare.py`` holds the harness and the stated tolerances);
CUDA graphs captured and replayed where the plan says so and never for a method that does not
declare itself capturable; captured against eager fast steps; the teacher cache against running
the teachers; a ``trainer.reference=true`` run resumed after a crash bit-identical to an
uninterrupted one. Each test's peak GPU memory and the deviations measured are written to
``$G2D_GPU_CHECK_OUT/cuda_report.json`` when that variable names a folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import run_interrupted
from path_compare import (
    EPOCHS,
    TOLERANCES,
    Tolerance,
    build_side,
    capture_problems,
    check,
    config_for,
    lockstep,
    random_teachers,
    synthetic_data,
)
from safetensors.torch import load_file

from g2d.config import load_config
from g2d.data.augment import Augmenter
from g2d.data.base import ModalitySpec, to_device
from g2d.data.feed import INDEX_KEY
from g2d.methods import METHODS
from g2d.runs.experiment import run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
# Captured against eager fast steps: the same kernels and cuDNN's cached algorithm choices, so
# only non-deterministic reductions (atomics in some weight-gradient kernels) may differ.
GRAPH_TOLERANCE = Tolerance(1e-3, 1e-6, 1.01 / 16, 1.005, 1.05, 0.9999, 0.999)
# Teacher outputs (relative error of the whole tensor): the cache ran in batches of
# trainer.eval_batch_size with channels_last weights, the check runs all rows at once, so cuDNN
# may pick other algorithms, each rounding differently (bf16; TF32 convolutions in fp32).
# A wrong row, or BatchNorm in training mode, is off by order 1.
CACHE_RTOL = {("bf16", "same"): 3e-2, ("bf16", "fp32"): 5e-2, ("fp32", "same"): 1e-2, ("fp32", "fp32"): 1e-2}
REPORT: dict[str, dict] = {}


def write_report() -> None:
    folder = os.environ.get("G2D_GPU_CHECK_OUT")
    if folder:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        payload = {"device": device, "torch": torch.__version__, "tests": REPORT}
        (Path(folder) / "cuda_report.json").write_text(json.dumps(payload, indent=1, default=str))


@pytest.fixture(autouse=True)
def peak_memory(request):
    """Each test from a clean allocator peak and cuDNN switches; its peak memory is recorded."""
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    entry = REPORT.setdefault(request.node.name, {})
    entry["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    write_report()


@pytest.fixture
def replays(monkeypatch) -> dict[str, int]:
    """Counts CUDA graph replays."""
    count = {"n": 0}
    original = torch.cuda.CUDAGraph.replay

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    return count


def sides(method: str, *fast: str):
    data = synthetic_data()
    reference_config = config_for(method, "trainer.reference=true", "trainer.device=cuda")
    teachers = random_teachers(reference_config, data)
    reference = build_side(reference_config, data, CUDA, teachers)
    fast_side = build_side(config_for(method, "trainer.device=cuda", *fast), synthetic_data(), CUDA, teachers)
    return reference, fast_side


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("method", list(METHODS))
def test_fast_path_matches_reference_and_captures_only_capturable_methods(method, precision, replays, request):
    reference, fast = sides(method, "trainer.fast=true", f"trainer.precision={precision}")
    comparisons = lockstep(reference, fast, EPOCHS)
    problems, report = check(comparisons, TOLERANCES["bf16" if precision == "bf16" else "cuda-fp32"])
    plan, graphed = fast.path.plan, fast.path.graphed
    REPORT.setdefault(request.node.name, {}).update(
        deviations=asdict(report), cuda_graph=plan.cuda_graph, notes=list(plan.notes),
        captures=None if graphed is None else graphed.captures, replays=replays["n"])
    assert plan.fast and (plan.dtype is None) == (precision == "fp32")
    problems = capture_problems(fast, len(comparisons), replays["n"]) + problems
    assert not problems, f"{len(problems)} problems ({precision} tolerances):\n" + "\n".join(problems[:25])


@pytest.mark.parametrize("method", [name for name, cls in METHODS.items() if cls.capturable])
def test_captured_steps_match_eager_fast_steps(method, replays, request):
    data = synthetic_data()
    config = config_for(method, "trainer.device=cuda", "trainer.fast=true", "trainer.cuda_graph=false")
    teachers = random_teachers(config, data)
    eager = build_side(config, data, CUDA, teachers)
    graph = build_side(config_for(method, "trainer.device=cuda", "trainer.fast=true"), synthetic_data(), CUDA, teachers)
    assert eager.path.graphed is None and graph.path.graphed is not None
    comparisons = lockstep(eager, graph, EPOCHS)
    problems, report = check(comparisons, GRAPH_TOLERANCE)
    REPORT.setdefault(request.node.name, {}).update(deviations=asdict(report), captures=graph.path.graphed.captures,
                                                    replays=replays["n"])
    problems = capture_problems(graph, len(comparisons), replays["n"]) + problems
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:25])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_teacher_cache_equals_running_the_teachers(precision, request):
    data = synthetic_data()
    config = config_for("g2d", "trainer.device=cuda", "trainer.fast=true", f"trainer.precision={precision}")
    reference_teachers = random_teachers(config, data).to(CUDA)
    side = build_side(config, data, CUDA, reference_teachers)
    frozen = side.path.teachers
    assert frozen.cache is not None and frozen.cache.rows == data.size("train") and side.path.summary()["teacher_cache"]
    rows = torch.randperm(data.size("train"), generator=torch.Generator().manual_seed(0))
    inputs = to_device({k: v[rows] for k, v in data.splits["train"].items()}, data, CUDA)
    cached = frozen({INDEX_KEY: rows.to(CUDA)})
    ran = frozen(inputs)  # no index: the teachers run, in inference mode at the run's precision
    with torch.no_grad():
        expected = reference_teachers(inputs)  # fp32, eager
    errors = {}
    for m in data.modalities:
        for kind in ("features", "logits"):
            got, same, fp32 = (getattr(o, kind)[m].double() for o in (cached, ran, expected))
            errors[(kind, m, "same")] = ((got - same).norm() / same.norm()).item()
            errors[(kind, m, "fp32")] = ((got - fp32).norm() / fp32.norm()).item()
    REPORT.setdefault(request.node.name, {})["relative_errors"] = {"/".join(k): v for k, v in errors.items()}
    for (kind, m, against), error in errors.items():
        assert error <= CACHE_RTOL[(precision, against)], (kind, m, f"against {against}", error)
    calls = []
    for teacher in side.teachers.teachers.values():
        teacher.register_forward_hook(lambda *args: calls.append(1))
    side.model.train()
    for batch in side.path.batches(0):
        side.path.step(batch, 0)
    torch.cuda.synchronize()
    assert calls == []  # a whole student epoch (warm-up, capture and replays) without a teacher forward pass


def test_reference_resume_is_bit_identical_on_cuda(tmp_path, monkeypatch):
    data = synthetic_data()
    common = ["model.encoder.name=resnet18", "model.encoder.width=8", "trainer.batch_size=16", "trainer.epochs=4",
              "teachers.epochs=1", "smp.tau=[2]", "method.name=g2d", "trainer.reference=true", "trainer.device=cuda",
              "trainer.progress=false", "optim.lr=0.05", f"teachers.root={tmp_path / 'teachers'}"]
    for name in ("once", "again"):
        run(load_config(None, [*common, f"out={tmp_path / name}"]), data)
    interrupted = load_config(None, [*common, f"out={tmp_path / 'resumed'}"])
    run_interrupted(monkeypatch, interrupted, after_epochs=2, data=data)
    run(load_config(None, [*common, f"out={tmp_path / 'resumed'}", "trainer.resume=true"]), data)
    weights = {name: load_file(tmp_path / name / "checkpoints" / "last.safetensors") for name in ("once", "again", "resumed")}
    differing = [k for k in weights["once"] if not torch.equal(weights["once"][k], weights["again"][k])]
    assert not differing, f"two uninterrupted reference runs differ on CUDA (non-deterministic kernels): {differing[:5]}"
    differing = [k for k in weights["once"] if not torch.equal(weights["once"][k], weights["resumed"][k])]
    assert not differing, f"the resumed run differs from the uninterrupted one: {differing[:5]}"
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("once", "resumed")]
    assert [h["train"] for h in histories[0]] == [h["train"] for h in histories[1]]


def test_augmentation_on_the_gpu_draws_the_cpu_crops_and_leaves_cuda_streams_alone():
    """kornia samples crop and flip on the CPU generator: a CUDA batch gets the same crops as on the CPU
    (up to interpolation rounding), and the CUDA generator (dropout, noise) is not advanced."""
    specs = {"clip": ModalitySpec("video", (3, 3, 64, 64))}
    batch = torch.rand(8, 3, 3, 64, 64)
    on_cpu = Augmenter(specs, seed=0)({"clip": batch}, epoch=1, step=2)["clip"]
    cuda_state = torch.cuda.get_rng_state()
    on_gpu = Augmenter(specs, seed=0)({"clip": batch.to(CUDA)}, epoch=1, step=2)["clip"]
    assert on_gpu.device.type == "cuda"
    difference = (on_gpu.cpu() - on_cpu).abs().max().item()
    REPORT.setdefault("augmentation", {})["max_abs_difference_cpu_gpu"] = difference
    assert difference < 1e-4
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
