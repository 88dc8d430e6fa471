"""Data-parallel training on the CPU with gloo: real processes started by torchrun.

2 processes with batch B must train to the weights 1 process with batch 2B reaches (same
rows per step, same seed): DDP averages the two half-batch gradients, SMP ranks on the
all-reduced confidence. The tolerance is float32 summation order: measured differences are
about 2e-7 on weights of magnitude ~1; we allow 1e-5.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from safetensors.torch import load_file

from g2d.config import load_config
from g2d.data.base import Batches
from g2d.errors import G2DError
from g2d.io import load_weights
from g2d.methods import build_method
from g2d.models.multimodal import MultimodalModel
from g2d.runs.experiment import run
from g2d.training import distributed
from g2d.training.checkpoint import write_hashes
from g2d.training.fast import TrainingPlan

WEIGHT_TOLERANCE = 1e-5
CONFIG = ROOT / "configs" / "mfeat.yaml"
# A last partial global batch cannot be split over processes, so every comparison drops it on both sides.
QUICK = [*TINY, "trainer.epochs=2", "trainer.drop_last=true"]
G2D_SMP = ["method.name=g2d", "smp.enabled=true", "smp.schedule=dynamic", "smp.modulator=partial", "smp.tau=[1]"]
# Generous bounds against a hang; nothing here asserts how fast anything runs.
LAUNCH_TIMEOUT = 300
# A two-node launch trains in about 10 s; a worker still running after this is a hang.
NODES_TIMEOUT = 240


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def train_command(overrides: list[str]) -> list[str]:
    return ["-m", "g2d.cli", "train", str(CONFIG), *QUICK, *overrides]


def worker_env() -> dict[str, str]:
    """One thread per process; gloo on the loopback interface, which every Linux box has (a container's
    hostname may resolve to an address its peers cannot reach)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def launch(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=worker_env())


def weights_difference(a: Path, b: Path) -> float:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


def assert_same_training(single: Path, parallel: Path) -> None:
    """Weights within tolerance, and the same best epoch, test accuracy and per-epoch SMP coefficients."""
    for name in ("last.safetensors", "best.safetensors"):
        assert weights_difference(single / "checkpoints" / name, parallel / "checkpoints" / name) <= WEIGHT_TOLERANCE
    one, two = (json.loads((folder / "metrics.json").read_text()) for folder in (single, parallel))
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    assert two["best_epoch"] == one["best_epoch"]
    assert two["test"]["multimodal"]["accuracy"] == one["test"]["multimodal"]["accuracy"]
    assert two["test"]["multimodal"]["loss"] == pytest.approx(one["test"]["multimodal"]["loss"], rel=1e-4)
    for a, b in zip(*(json.loads((f / "history.json").read_text()) for f in (single, parallel))):
        kappas = [k for k in a["train"] if k.startswith("kappa/")]
        for key in ["loss", *kappas]:
            assert b["train"][key] == pytest.approx(a["train"][key], rel=1e-4, abs=1e-6), key


def test_sharded_batches_of_all_ranks_are_the_global_batches():
    tensors = {"label": torch.arange(29)}
    whole = Batches(tensors, 6, shuffle=True, seed=3, drop_last=True)
    shards = [distributed.ShardedBatches(tensors, 3, True, 3, shard=r, shards=2) for r in range(2)]
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        for shard in shards:
            shard.set_epoch(epoch)
        expected = [b["label"] for b in whole]
        parts = zip(*(list(shard) for shard in shards))
        got = [torch.cat([p["label"] for p in pair]) for pair in parts]
        assert len(got) == len(expected) == 4
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_methods_that_own_their_step_are_refused_with_a_reason(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for name in ("mla", "mmpareto", "reconboost", "ogm_ge"):
        with pytest.raises(G2DError, match=rf"'{name}' cannot train on 2 processes: .+; run it on one process"):
            distributed.check_method(build_method({"name": name}, "classification", ["a", "b"]))
    with pytest.raises(G2DError, match="hypergradients"):
        distributed.check_method(build_method({"name": "dlmg", "dlmg": {"strategy": "learned"}}, "classification", ["a", "b"]))
    for name in ("joint", "g2d", "umt", "mses", "mslr", "dlmg", "pmr"):
        distributed.check_method(build_method({"name": name}, "classification", ["a", "b"]))


def test_cuda_graph_is_switched_off_under_ddp_with_a_note(monkeypatch):
    plan = TrainingPlan(fast=True, device=torch.device("cpu"), cuda_graph=True)
    distributed.adjust_plan(plan)
    assert plan.cuda_graph and not plan.notes
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    distributed.adjust_plan(plan)
    assert not plan.cuda_graph and "DDP" in plan.notes[0]


def test_refused_method_under_torchrun_writes_nothing(tmp_path):
    out = tmp_path / "mla"
    done = launch(torchrun("--standalone", "--nproc-per-node", "2",
                           *train_command(["method.name=mla", f"out={out}", f"teachers.root={tmp_path / 't'}"])))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("g2d: error:")]
    assert lines and "'mla' cannot train on 2 processes" in lines[0], done.stderr[-2000:]
    assert "g2d/experiment.py" not in done.stderr  # no traceback from g2d (torchrun prints its own summary)
    assert not out.exists() and not (tmp_path / "t").exists()


def test_a_refusal_under_torchrun_is_one_line_from_rank_zero_before_the_launchers_report(tmp_path):
    done = launch(torchrun("--standalone", "--nproc-per-node", "2",
                           *train_command(["method.name=mmpareto", f"out={tmp_path / 'run'}"])))
    lines = done.stderr.splitlines()
    errors = [index for index, line in enumerate(lines) if line.startswith("g2d: error:")]
    assert len(errors) == 1 and "'mmpareto' cannot train on 2 processes" in lines[errors[0]], done.stderr[-3000:]
    launcher = [index for index, line in enumerate(lines) if not line.startswith("g2d: ")]
    assert launcher and errors[0] < launcher[0], done.stderr[-3000:]
    assert "rank      : 0 (local_rank: 0)\n  exitcode  : 2" in done.stderr  # the root cause torchrun names


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch_for_joint_train(tmp_path):
    run(load_config(CONFIG, [*QUICK, "method.name=joint", "trainer.batch_size=64", f"out={tmp_path / 'one'}"]))
    done = launch(torchrun("--standalone", "--nproc-per-node", "2",
                           *train_command(["method.name=joint", "trainer.batch_size=32", f"out={tmp_path / 'two'}"])))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 0 alone reports
    assert_same_training(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_two_processes_match_one_process_for_g2d_with_smp(tmp_path):
    teachers = f"teachers.root={tmp_path / 'teachers'}"
    run(load_config(CONFIG, [*QUICK, *G2D_SMP, "trainer.batch_size=64", f"out={tmp_path / 'one'}", teachers]))
    done = launch(torchrun("--standalone", "--nproc-per-node", "2",
                           *train_command([*G2D_SMP, "trainer.batch_size=32", f"out={tmp_path / 'two'}", teachers])))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training(tmp_path / "one", tmp_path / "two")
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert history[0]["train"]["kappa/pix"] < 1.0  # partial modulation acted on the confident modality


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (read from /proc; empty where there is none)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*") if (task / "children").exists()
            for child in (task / "children").read_text().split()]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return [found for child in children(pid) for found in (child, *descendants(child))]


def running_workers(launcher: int) -> list[int]:
    """The g2d processes still alive below a torchrun launcher: its workers (the launcher itself excluded)."""
    alive = []
    for pid in descendants(launcher):
        with contextlib.suppress(OSError):
            if b"g2d.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.append(pid)
    return alive


def launch_nodes(args: list[str], count: int, logs: Path) -> list[tuple[int | None, str]]:
    """Start ``count`` copies of one torchrun command (the nodes of a multi-node launch) and wait for all
    under one deadline; returns each node's ``(returncode, output)``.

    Each node writes to its own file: a node writing into a pipe nobody drains would block, and hold up
    the other at torchrun's exit barrier. A worker still running at the deadline fails the test, with
    every Python process's stack (faulthandler, on SIGABRT) in its node's log. A launcher still running
    after all its workers have ended is torch's: its agents can wait up to 300 s for each other at their
    exit barrier (a known race, pytorch#69520); it is stopped, named in a warning, and its returncode is None.
    """
    env = {**worker_env(), "PYTHONFAULTHANDLER": "1"}
    files = [logs / f"node{n}.log" for n in range(count)]
    with contextlib.ExitStack() as stack:
        nodes = [subprocess.Popen(args, stdout=stack.enter_context(file.open("w")), stderr=subprocess.STDOUT, env=env)
                 for file in files]
    deadline = time.monotonic() + NODES_TIMEOUT
    while any(node.poll() is None for node in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    late = [n for n, node in enumerate(nodes) if node.poll() is None]
    workers = {n: running_workers(nodes[n].pid) for n in late}
    for n in late:
        for pid in [*descendants(nodes[n].pid), nodes[n].pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        time.sleep(2)
        nodes[n].kill()
    for node in nodes:
        node.wait()
    outputs = [file.read_text() for file in files]
    stuck = [n for n in late if workers[n]]
    assert not stuck, (f"workers of nodes {stuck} still running after {NODES_TIMEOUT} s:\n"
                       + "\n".join(o[-6000:] for o in outputs))
    if late:
        warnings.warn(f"torchrun of nodes {late} had not exited {NODES_TIMEOUT} s after the start although "
                      "their workers had ended (torch's exit barrier); stopped")
    return [(None if n in late else node.returncode, output) for n, (node, output) in enumerate(zip(nodes, outputs))]


@pytest.mark.slow
def test_two_nodes_through_c10d_rendezvous_train_teachers_and_use_the_teacher_cache(tmp_path):
    """Two torchrun launches (``--nnodes 2``) meet at a c10d rendezvous on localhost; teachers are
    trained under DDP, and the fast path's teacher cache serves the student."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "g2d-test",
                    *train_command(["method.name=g2d", "trainer.fast=true", "trainer.batch_size=32",
                                    f"out={tmp_path / 'two' / 'g2d'}"]))
    nodes = launch_nodes(args, 2, tmp_path)
    assert all(code in (0, None) for code, _ in nodes), "\n".join(output[-3000:] for _, output in nodes)
    assert sum(output.count("run folder:") for _, output in nodes) == 1  # rank 0 alone reports
    run(load_config(CONFIG, [*QUICK, "method.name=g2d", "trainer.fast=true", "trainer.batch_size=64",
                             f"out={tmp_path / 'one' / 'g2d'}"]))
    for modality in ("pix", "mor"):
        single, parallel = (load_config(CONFIG, [*QUICK, f"out={tmp_path / n / 'g2d'}"]).teachers_dir() / f"teacher_{modality}"
                            for n in ("one", "two"))
        assert weights_difference(single / "teacher.safetensors", parallel / "teacher.safetensors") <= WEIGHT_TOLERANCE
    metrics = json.loads((tmp_path / "two" / "g2d" / "metrics.json").read_text())
    assert metrics["environment"]["training_path"]["teacher_cache"] is True
    assert_same_training(tmp_path / "one" / "g2d", tmp_path / "two" / "g2d")


def worker_pids(launcher: int) -> dict[int, int]:
    """``{rank: pid}`` of the processes torchrun started (read from /proc)."""
    found = {}
    for pid in children(launcher):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks = [item[5:] for item in environ if item.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = pid
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finding torchrun's workers needs Linux /proc")
def test_a_killed_rank_stops_the_run_with_a_readable_error_and_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = torchrun("--standalone", "--nproc-per-node", "2",
                       *train_command(["method.name=joint", "trainer.epochs=100000", "trainer.batch_size=32",
                                       f"out={out}"]))
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (out / "checkpoints" / "last_state.pt").is_file():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run never checkpointed"
            time.sleep(0.2)
        workers = worker_pids(launcher.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0
    # Rank 0 either fails in its next collective or is stopped by torchrun first; either way one line
    # names what happened and where the checkpoint is, and torchrun's summary names the killed rank.
    errors = [line for line in stderr.splitlines() if line.startswith("g2d: error: rank 0: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert ("lost contact with another process" in errors[0] or "stopped by torchrun" in errors[0]) and \
        f"the last checkpoint in {out / 'checkpoints'} is kept" in errors[0]
    assert "Signal 9 (SIGKILL)" in stderr
    payload = torch.load(out / "checkpoints" / "last_state.pt", map_location="cpu", weights_only=True)
    assert payload["state"]["epoch"] >= 1 and payload["processes"] == 2
    config = load_config(CONFIG, TINY)
    from g2d.data import load_dataset
    from g2d.training.teachers import output_size

    data = load_dataset(config.dataset).select(["pix", "mor"])
    load_weights(out / "checkpoints" / "last.safetensors", MultimodalModel(data.modalities, config.model, output_size(data)))


def test_resume_on_another_number_of_processes_is_refused(tmp_path):
    overrides = [*QUICK, "method.name=joint", f"out={tmp_path / 'run'}"]
    run(load_config(CONFIG, overrides))
    path = tmp_path / "run" / "checkpoints" / "last_state.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["processes"] == 1
    payload["processes"] = 2
    torch.save(payload, path)
    write_hashes(path.parent, None)  # as a run on 2 processes would have recorded it
    with pytest.raises(G2DError, match="trained on 2 process\\(es\\) and this one on 1; resume with the same number"):
        run(load_config(CONFIG, [*overrides, "trainer.resume=true", "trainer.epochs=3"]))  # extend: it loads the state
