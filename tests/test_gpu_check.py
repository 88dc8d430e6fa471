"""The GPU check, proven on the CPU: the lock-step comparison harness and its tolerances that the
CUDA suite uses (tests/path_compare.py), the CUDA suite's collection, and
``benchmarks/gpu_check.sh --dry-run`` end to end at toy size."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT
from path_compare import (
    BATCH,
    TOLERANCES,
    StepComparison,
    build_side,
    capture_problems,
    check,
    config_for,
    lockstep,
    random_teachers,
    synthetic_data,
)

CPU = torch.device("cpu")
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


# The CUDA suite's schedule shrunk for two shared CPU cores: 3 epochs of 4 steps, SMP's phase
# change after epoch 0, the learning-rate step after epoch 1, ResNet-18 at width 4.
CPU_EPOCHS = 3
CPU_ROWS = 4 * BATCH
CPU_SCHEDULE = ["trainer.epochs=3", "smp.tau=[1]", "optim.lr_step=2", "model.encoder.width=4"]


def cpu_sides(method: str, *fast: str):
    data = synthetic_data(rows=CPU_ROWS)
    reference_config = config_for(method, "trainer.reference=true", *CPU_SCHEDULE)
    teachers = random_teachers(reference_config, data)
    reference = build_side(reference_config, data, CPU, teachers)
    fast_config = config_for(method, "trainer.fast=true", *CPU_SCHEDULE, *fast)
    return reference, build_side(fast_config, synthetic_data(rows=CPU_ROWS), CPU, teachers)


@pytest.mark.parametrize("method", ["g2d", "mla"])
def test_lockstep_fast_fp32_matches_reference_on_cpu_across_smp_and_lr_changes(method):
    """The harness itself: fp32 fast and reference steps agree to float rounding, step by step."""
    reference, fast = cpu_sides(method)
    comparisons = lockstep(reference, fast, CPU_EPOCHS)
    assert len(comparisons) == CPU_EPOCHS * CPU_ROWS // BATCH
    problems, report = check(comparisons, TOLERANCES["cpu-fp32"])
    assert problems == []
    assert report.median_ratio.keys() >= {"encoder:audio", "encoder:image"}
    # SMP (ranked, tau 1) freezes the more confident image encoder in epoch 0, on both paths.
    frozen = [c.norms["encoder:image"] for c in comparisons if c.epoch == 0]
    assert frozen and all(n == (0.0, 0.0) for n in frozen)
    assert all(c.norms["encoder:image"][0] > 0 for c in comparisons if c.epoch >= 1)
    # StepLR (step 2, x0.1) decayed the learning rate once within the three epochs.
    assert reference.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.1)


def test_capture_checks_of_the_cuda_suite_on_emulated_graphs(monkeypatch):
    """The CUDA suite's graph assertions, on the CPU stand-in for CUDA graphs (tests/test_capture.py):
    one capture per epoch (across the phase change and the learning-rate step), replays matching eager steps."""
    from test_capture import (  # the stand-in lives with its own tests
        FakeGraph,
        emulate_cuda_graphs,
    )

    emulate_cuda_graphs(monkeypatch)  # the reference path stays eager: it never builds a graphed step
    replays = {"n": 0}
    original = FakeGraph.replay

    def counted(self):
        replays["n"] += 1
        original(self)

    monkeypatch.setattr(FakeGraph, "replay", counted)
    reference, fast = cpu_sides("g2d")
    assert reference.path.graphed is None
    comparisons = lockstep(reference, fast, CPU_EPOCHS)
    assert check(comparisons, TOLERANCES["cpu-fp32"])[0] == []
    assert fast.path.graphed.captures == 3 and replays["n"] == len(comparisons) - 5  # 3 + 1 + 1 warm-up steps
    assert capture_problems(fast, len(comparisons), replays["n"]) == []
    assert capture_problems(fast, len(comparisons), 0) == [f"0 replays in {len(comparisons)} steps with 3 captures"]
    fast.path.graphed.failed = "RuntimeError: operation not permitted when stream is capturing"
    assert capture_problems(fast, len(comparisons), replays["n"]) == [f"capture failed: {fast.path.graphed.failed}"]
    monkeypatch.setattr(type(fast.method), "capturable", False)
    assert capture_problems(fast, len(comparisons), replays["n"]) == [
        f"method g2d does not declare itself capturable, yet graphs ran (plan True, {replays['n']} replays)",
        f"no note says why g2d runs eagerly: {fast.path.plan.notes}"]


def test_lockstep_bf16_on_cpu_is_within_the_bf16_tolerances():
    """The bf16 tolerances the CUDA suite states hold for CPU bf16 autocast of the same steps."""
    reference, fast = cpu_sides("g2d", "trainer.precision=bf16")
    problems, report = check(lockstep(reference, fast, CPU_EPOCHS), TOLERANCES["bf16"])
    assert problems == [], problems
    assert report.worst_loss_rel["loss"] > 0  # bf16 did change something


def test_lockstep_refuses_batches_of_different_rows():
    reference, fast = cpu_sides("joint")
    original = fast.path.batches

    def shifted(epoch):
        batches = list(original(epoch))
        return iter(batches[1:] + batches[:1])

    fast.path.batches = shifted
    with pytest.raises(AssertionError, match="different rows"):
        lockstep(reference, fast, 1)


def comparison(step: int, ratio: float = 1.0, cosine: float = 1.0, loss: float = 2.0, accuracy: float = 0.5,
               frozen_fast: float = 0.0) -> StepComparison:
    return StepComparison(
        epoch=0, step=step,
        terms={"loss": (2.0, loss), "accuracy": (0.5, accuracy)},
        norms={"encoder:a": (0.1, 0.1 * ratio), "encoder:b": (0.0, frozen_fast)},
        cosines={"encoder:a": cosine, "encoder:b": math.nan},
    )


def test_check_accepts_agreement_and_names_each_kind_of_deviation():
    bf16 = TOLERANCES["bf16"]
    assert check([comparison(i) for i in range(10)], bf16)[0] == []
    # bf16 noise: single steps far off in norm and direction, the median on scale.
    noisy = [comparison(i, ratio=1.6 if i % 2 else 1 / 1.6, cosine=0.95 if i % 3 else 0.6) for i in range(8)]
    problems, report = check(noisy, bf16)
    assert problems == [] and report.min_cosine["encoder:a"] == pytest.approx(0.6)
    # A lost or doubled factor: every step within single-step bounds, the median is not.
    problems = check([comparison(i, ratio=1.3) for i in range(10)], bf16)[0]
    assert problems == ["encoder:a: median update norm ratio fast/reference 1.3000 over 10 steps"]
    problems = check([comparison(0, ratio=2.5)], bf16)[0]
    assert "epoch 0 step 0: encoder:a update norm ratio fast/reference 2.5000" in problems
    problems = check([comparison(0, cosine=0.3)], bf16)[0]
    assert "epoch 0 step 0: encoder:a update cosine 0.3000" in problems
    problems = check([comparison(0, frozen_fast=1e-9)], bf16)[0]
    assert problems == ["epoch 0 step 0: encoder:b moved by 1e-09 on the fast path and 0 on the reference "
                        "(one of them frozen)"]
    assert check([comparison(0, loss=2.05)], bf16)[0] == []
    assert check([comparison(0, loss=2.1)], bf16)[0] == ["epoch 0 step 0: loss 2.1 against 2"]
    assert check([comparison(0, accuracy=0.5 + 1 / BATCH)], bf16)[0] == []
    assert check([comparison(0, accuracy=0.5 + 1 / BATCH)], TOLERANCES["cpu-fp32"])[0] == [
        "epoch 0 step 0: accuracy 0.5625 against 0.5"]


def test_cuda_suite_is_collected_and_skipped_without_cuda():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=python_env())
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line for line in result.stdout.splitlines() if line.startswith("tests/test_cuda.py::")]
    # 13 methods x 2 precisions, the capturable methods' graph checks, 2 cache checks, 1 resume check.
    assert len([c for c in collected if "matches_reference" in c]) == 26
    assert any("teacher_cache" in c for c in collected) and any("resume" in c for c in collected)


def python_env() -> dict[str, str]:
    """The environment for child processes: this interpreter first on PATH, the checkout on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT / "src")
    return env


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def raw_avdigits_tree(root: Path) -> Path:
    """The folder layout gpu_carry.sh fills (fsdd/, mnist/, noise/), with tiny synthetic contents."""
    rng = np.random.default_rng(0)
    for folder in ("fsdd", "mnist", "noise"):
        (root / folder).mkdir(parents=True)
    for digit in range(10):
        for take in range(8):
            tone = 0.3 * np.sin(2 * np.pi * (300 + 60 * digit) * np.arange(2400) / 8000) + 0.01 * rng.normal(size=2400)
            sf.write(root / "fsdd" / f"{digit}_spk_{take}.wav", tone, 8000, subtype="PCM_16")
    labels = np.arange(100) % 10
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, size=(100, 28, 28)))
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", 2049, labels)
    table = np.concatenate([rng.integers(0, 256, size=(200, 784)), (np.arange(200) % 10)[:, None]], axis=1)
    with gzip.open(root / "mnist" / "mnist_5k.csv.gz", "wt") as handle:
        np.savetxt(handle, table, fmt="%d", delimiter=",")
    for name in ("a.wav", "b.wav"):
        sf.write(root / "noise" / name, 0.1 * rng.normal(size=22050), 44100, subtype="PCM_16")
    return root


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=3700,
                          env=python_env())


@pytest.mark.slow
def test_dry_run_runs_every_stage_at_toy_size_into_at_most_eight_small_files(tmp_path):
    raw = raw_avdigits_tree(tmp_path / "raw")
    out = tmp_path / "out"
    result = run_script("--dry-run", "--data", str(raw), "--work", str(tmp_path / "work"), str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert all((out / name).is_file() for name in files) and len(files) <= 8
    assert files == ["avdigits.txt", "cuda_tests.txt", "cuda_tests.xml", "env.txt", "student_step.json",
                     "student_step.txt", "summary.txt"]  # cuda_report.json only where CUDA tests ran
    assert all((out / name).stat().st_size < 1_000_000 for name in files)
    summary = (out / "summary.txt").read_text()
    for stage in ("environment", "cuda_tests", "profile", "student_step", "augment_cost", "prepare", "grid",
                  "grid_report"):
        assert any(line.split()[:2] == [stage, "ok"] for line in summary.splitlines()), summary
    assert "device: no CUDA device" in (out / "env.txt").read_text()
    tests = (out / "cuda_tests.txt").read_text()
    assert " skipped" in tests and "failed" not in tests and "error" not in tests.lower()
    records = json.loads((out / "student_step.json").read_text())["results"]
    assert [(r["shape"], r["k"], r["batch"]) for r in records] == [
        ("avmnist", 2, 2), ("avmnist", 3, 2), ("cremad", 2, 2), ("cremad", 3, 2)]
    assert all(r[p]["samples_per_s"] > 0 for r in records for p in ("reference", "fast"))
    step_text = (out / "student_step.txt").read_text()
    assert "profile: avmnist shapes" in step_text and "profile: cremad shapes" in step_text
    assert "+ normalize + crop/flip" in step_text  # the augmentation cost stage
    avdigits = (out / "avdigits.txt").read_text()
    assert "avdigits written to" in avdigits and "160 train and 60 test pairs" in avdigits
    table = avdigits[avdigits.index("== summary"):]
    for row in ("| Joint-Train |", "| G²D |", "| Joint-Train + SMP |", "| G²D loss (no SMP) |", "| teachers |"):
        assert row in table, table
    assert avdigits.count("2 epochs") == 6  # two teachers and four students, from their metrics.json


def test_refused_runs_change_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    result = run_script("--dry-run", "--data", str(raw_avdigits_tree(tmp_path / "raw")), str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"gpu_check: error: {out}: output folder is not empty "
                                                  "(results already there are never replaced)"]
    assert [p.name for p in out.iterdir()] == ["earlier.txt"] and (out / "earlier.txt").read_text() == "kept"
    missing = run_script("--data", str(tmp_path / "nowhere"), str(tmp_path / "new"))
    assert missing.returncode == 2 and "nowhere/fsdd: raw avdigits folder not found" in missing.stderr
    assert not (tmp_path / "new").exists()
    carry = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_carry.sh"), "--data", str(tmp_path / "nowhere")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert carry.returncode == 2 and carry.stderr.startswith("gpu_carry: error: ")
