"""Runs that survive crashes, mistakes and each other (issue 12).

A real training process is killed with SIGKILL at named points, inside and around checkpoint
commits, then resumed; the result must equal an uninterrupted run bit for bit. Each bad input
ends with exit status 2, one line naming the culprit, and the run folder unchanged.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from g2d.cli import main
from g2d.faults import run_outcome
from g2d.runs.runfolder import FolderLock

CONFIG = str(ROOT / "configs" / "mfeat.yaml")
JOINT = [*TINY, "method.name=joint", "smp.enabled=false"]


def train(tmp_path, name, *extra):
    return main(["train", CONFIG, *JOINT, f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra])


def train_process(tmp_path, name, *extra, env=None):
    """``g2d train`` in a child process (so it can be killed for real); returns the finished process."""
    command = [sys.executable, "-m", "g2d.cli", "train", CONFIG, *JOINT, f"out={tmp_path / name}",
               f"teachers.root={tmp_path / 'teachers'}", *extra]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` with its bytes (or link target), to compare before and after."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        entries[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return entries


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    assert train(folder, "run") == 0
    return run_outcome(folder / "run")


@pytest.mark.parametrize("point", [
    "checkpoint.after_weights:2",  # new weights written, the old checkpoint still committed
    "checkpoint.after_state:2",  # the whole new checkpoint written, not yet committed
    "checkpoint.before_commit:3",  # the pointer to the last epoch's checkpoint made, not yet swapped in
    "checkpoint.after_commit:2",  # committed, the old checkpoint not yet cleaned away
    "atomic_write:3",  # metrics.json half written after the last epoch
])
def test_killed_run_resumes_bit_identical(tmp_path, uninterrupted, point):
    killed = train_process(tmp_path, "run", env={"G2D_TEST_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr
    assert train(tmp_path, "run", "trainer.resume=true") == 0
    assert run_outcome(tmp_path / "run") == uninterrupted
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.endswith((".tmp", ".new"))]
    assert leftovers == [] and len(list((tmp_path / "run" / ".checkpoints").iterdir())) == 1


def test_finished_run_is_extended_to_the_same_result_as_a_longer_run(tmp_path, uninterrupted):
    assert train(tmp_path, "run", "trainer.epochs=2") == 0
    assert train(tmp_path, "run", "trainer.resume=true") == 0
    assert run_outcome(tmp_path / "run") == uninterrupted


def test_resume_accepts_a_relative_path_and_a_moved_folder(tmp_path, monkeypatch, uninterrupted):
    killed = train_process(tmp_path, "run", env={"G2D_TEST_KILL_AT": "checkpoint.after_commit:1"})
    assert killed.returncode == -9, killed.stderr
    (tmp_path / "run").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    assert main(["train", CONFIG, *JOINT, "out=moved", "teachers.root=teachers", "trainer.resume=true"]) == 0
    assert run_outcome(tmp_path / "moved") == uninterrupted


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    assert train(tmp_path, "run") == 0
    before = snapshot(tmp_path / "run")
    assert train(tmp_path, "run", "trainer.resume=true") == 0
    assert snapshot(tmp_path / "run") == before


def test_overwrite_replaces_a_run_only_when_asked(tmp_path):
    assert train(tmp_path, "run", "trainer.epochs=1") == 0
    assert train(tmp_path, "run", "trainer.epochs=2", "trainer.overwrite=true") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2


def refused(capsys, code: int, *fragments: str) -> str:
    """Assert a one-line ``g2d: error:`` refusal with exit status 2 naming every fragment."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("g2d: error:") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run, copied fresh for each test that must leave it unchanged."""
    folder = tmp_path_factory.mktemp("finished")
    assert train(folder, "run", "trainer.epochs=2") == 0
    return folder / "run"


@pytest.fixture
def finished_copy(tmp_path, finished):
    subprocess.run(["cp", "-a", str(finished), str(tmp_path / "run")], check=True)
    return tmp_path / "run"


@pytest.mark.parametrize("extra, fragments", [
    ([], ["already holds a finished run", "trainer.resume=true", "trainer.overwrite=true"]),
    (["trainer.epochs=0"], ["trainer.epochs", "at least 1"]),
    (["trainer.epochs=-3"], ["trainer.epochs"]),
    (["optim.lr=-1"], ["optim.lr"]),
    (["trainer.resume=true", "optim.lr=0.2"], ["optim.lr", "0.2"]),
    (["trainer.resume=true", "trainer.epochs=1"], ["trainer.epochs", "only extend"]),
    (["trainer.resume=true", "trainer.overwrite=true"], ["trainer.resume", "trainer.overwrite"]),
    (["model.encoders.pixx.hidden=[8]"], ["model.encoders.pixx"]),
    (["dataset.modalities=[pix,pix]"], ["dataset.modalities", "pix"]),
])
def test_bad_input_leaves_a_finished_run_unchanged(tmp_path, finished_copy, capsys, extra, fragments):
    before = snapshot(finished_copy)
    code = main(["train", CONFIG, *JOINT, "trainer.epochs=2", f"out={finished_copy}",
                 f"teachers.root={tmp_path / 'teachers'}", *extra])
    refused(capsys, code, *fragments)
    assert snapshot(finished_copy) == before


def test_an_interrupted_run_is_refused_without_resume(tmp_path, capsys):
    killed = train_process(tmp_path, "run", env={"G2D_TEST_KILL_AT": "checkpoint.after_commit:1"})
    assert killed.returncode == -9, killed.stderr
    before = snapshot(tmp_path / "run")
    refused(capsys, train(tmp_path, "run"), "interrupted run (checkpoint after epoch 1)", "trainer.resume=true")
    assert snapshot(tmp_path / "run") == before


def test_run_folder_in_use_is_refused_naming_the_other_process(tmp_path, finished_copy, capsys):
    lock = FolderLock(finished_copy)
    lock.acquire(False, "out:", "")
    lock.announce()
    try:
        before = snapshot(finished_copy)
        refused(capsys, train(tmp_path, "run", "trainer.resume=true"), str(finished_copy), f"pid {os.getpid()}")
        assert snapshot(finished_copy) == before
    finally:
        lock.release(remove=True)


def test_yaml_whose_top_level_is_a_list(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    refused(capsys, main(["train", str(config)]), "list.yaml", "mapping")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_cuda(tmp_path, capsys):
    refused(capsys, train(tmp_path, "run", "trainer.device=cuda"), "trainer.device")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_is_or_is_under_a_file(tmp_path, capsys, where):
    (tmp_path / "file").write_text("keep me\n")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    refused(capsys, main(["train", CONFIG, *JOINT, f"out={out}"]), str(out))
    assert (tmp_path / "file").read_text() == "keep me\n"


def test_demo_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me\n")
    refused(capsys, main(["demo", "--out", str(tmp_path / "file")]), "--out", str(tmp_path / "file"))


def test_read_only_out(tmp_path, capsys, monkeypatch):
    """As root (CI) permission bits do not stop writes, so the refusal of the file system is simulated."""
    original = os.open
    read_only = tmp_path / "ro"
    read_only.mkdir()

    def refuse_writes(path, flags, *args, **kwargs):
        if str(path).startswith(str(read_only)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_writes)
    refused(capsys, main(["train", CONFIG, *JOINT, f"out={read_only}"]), str(read_only), "Permission denied")
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("point", ["checkpoint.after_weights:2", "atomic_write:3"])
def test_full_disk_says_so_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, point):
    monkeypatch.setenv("G2D_TEST_FAIL_AT", point)
    monkeypatch.setattr("g2d.faults._hits", {})
    refused(capsys, train(tmp_path, "run"), "no space left on device", str(tmp_path / "run"))
    entries = [p.name for p in (tmp_path / "run").rglob("*")]
    assert not [n for n in entries if n.endswith((".tmp", ".new"))], entries
    assert len(list((tmp_path / "run" / ".checkpoints").iterdir())) == 1  # the committed checkpoint alone


def test_non_finite_loss_in_the_first_epoch_names_no_missing_checkpoint(tmp_path, capsys, monkeypatch):
    from g2d.methods.joint import JointTrain

    original = JointTrain.loss
    monkeypatch.setattr(JointTrain, "loss", lambda self, *a: (original(self, *a)[0] * float("nan"), original(self, *a)[1]))
    err = refused(capsys, train(tmp_path, "run"), "epoch 0", "no checkpoint was written")
    assert "checkpoints" not in err


def test_stale_teachers_are_refused_with_the_difference_named(tmp_path, capsys):
    teachers = ["method.name=umt", "teachers.epochs=1"]
    assert train(tmp_path, "a", *teachers) == 0
    before = snapshot(tmp_path / "teachers")
    refused(capsys, train(tmp_path, "b", "method.name=umt", "teachers.epochs=2"), "teachers.epochs", "trained for 1")
    assert snapshot(tmp_path / "teachers") == before


def test_class_missing_from_training_is_a_visible_warning(tmp_path, caplog):
    from g2d.config import load_config
    from g2d.data import load_dataset
    from g2d.runs.experiment import run

    config = load_config(CONFIG, [*JOINT, "trainer.epochs=1", f"out={tmp_path / 'run'}"])
    data = load_dataset(config.dataset)
    keep = data.splits["train"]["label"] != 3
    data.splits["train"] = {key: value[keep] for key, value in data.splits["train"].items()}
    with caplog.at_level("WARNING", logger="g2d"):
        run(config, data)
    assert any("class(es) 3" in r.getMessage() and "test split" in r.getMessage() for r in caplog.records)


def test_smp_window_that_leaves_a_modality_no_epoch_is_refused(tmp_path, capsys):
    refused(capsys, train(tmp_path, "run", "method.name=umt", "smp.enabled=true", "smp.tau=[10]", "trainer.epochs=1"),
            "config key smp.tau: phases [10] take 10 epochs and training has 1")
    assert list(tmp_path.iterdir()) == []


def test_progress_is_one_line_per_epoch_when_output_is_not_a_terminal(tmp_path, capsys):
    assert train(tmp_path, "run", "trainer.progress=true") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "epoch" in line]
    assert [line.split("epoch ")[1].split(",")[0] for line in lines] == ["1/3", "2/3", "3/3"]


def test_teachers_needed_by_two_runs_at_once_are_trained_once(tmp_path):
    command = [sys.executable, "-m", "g2d.cli", "train", CONFIG, *TINY, "method.name=umt", "trainer.progress=true",
               f"teachers.root={tmp_path / 'teachers'}"]
    children = [subprocess.Popen([*command, f"out={tmp_path / name}"], stderr=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    errs = [child.communicate(timeout=600)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0], errs
    for modality in ("pix", "mor"):
        assert sum(err.count(f"teacher_{modality}: epoch 1/") for err in errs) == 1, errs
