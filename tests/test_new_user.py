"""What a new user hit next (issue 26): teachers of another seed, orphaned sweep workers, stale analyses,
a report counting one run twice, a relative dataset.root, and a config pointing where nothing is prepared."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, run_interrupted

from g2d.cli import main
from g2d.config import load_config
from g2d.errors import G2DError
from g2d.locks import FolderLock, try_lock
from g2d.methods import build_method
from g2d.runs.experiment import run
from g2d.training import distributed

CONFIG = str(ROOT / "configs" / "mfeat.yaml")
JOINT = [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=2"]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` with its bytes (or link target), to compare before and after."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        entries[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return entries


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("g2d: error: "), err
    return err[0]


# 1. Teachers of another seed


def test_train_runs_of_two_seeds_get_their_own_teachers_and_a_shared_root_is_refused(tmp_path, capsys):
    student = [*TINY, "method.name=g2d", "smp.tau=[1]", "trainer.epochs=2"]
    assert main(["train", CONFIG, *student, "seed=1", f"out={tmp_path / 'seed1'}"]) == 0
    first = tmp_path / "teachers" / "mfeat_seed1"
    assert json.loads((first / "teacher_pix" / "teacher.json").read_text())["seed"] == 1
    # Seed 2 pointed at the seed-1 teachers is refused before anything is written.
    assert main(["train", CONFIG, *student, "seed=2", f"out={tmp_path / 'seed2'}", f"teachers.root={first}"]) == 2
    line = only_error_line(capsys)
    assert "'seed' is 1 but this run needs 2" in line
    assert not (tmp_path / "seed2").exists()
    # Seed 2 with the default teachers folder trains its own, under its seed.
    assert main(["train", CONFIG, *student, "seed=2", f"out={tmp_path / 'seed2'}"]) == 0
    second = tmp_path / "teachers" / "mfeat_seed2"
    assert json.loads((second / "teacher_pix" / "teacher.json").read_text())["seed"] == 2
    assert (first / "teacher_pix" / "teacher.safetensors").read_bytes() != \
        (second / "teacher_pix" / "teacher.safetensors").read_bytes()
    metrics = json.loads((tmp_path / "seed2" / "metrics.json").read_text())
    assert metrics["teachers"]["pix"] == json.loads((second / "teacher_pix" / "teacher.json").read_text())["test"]


# 2. kill -9 of a sweep


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper has stopped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_sweep_takes_its_workers_with_it_and_frees_the_run_folders(tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "g2d.cli", "sweep", CONFIG, *JOINT, "trainer.epochs=100000", "--grid", "method.name=joint",
               "--seeds", "0", "1", "--workers", "2", "--out", str(out)]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [out / "method.name=joint" / f"seed{s}" / ".lock" for s in (0, 1)]
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not all(lock.is_file() for lock in locks):  # both workers are training
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = [pid for pid in children(sweep.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
        for lock in locks:
            descriptor = os.open(lock, os.O_RDWR)
            try:
                assert try_lock(descriptor)
            finally:
                os.close(descriptor)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# 3. UME under torchrun


def test_ume_is_refused_on_several_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(G2DError, match=r"method.name: 'ume' cannot train on 2 processes: .*fusion"):
        distributed.check_method(build_method({"name": "ume"}, "classification", ["pix", "mor"]))


# 4. An analysed run, extended


def test_analysis_records_its_checkpoint_and_a_stale_one_is_refused_by_report(tmp_path, monkeypatch, capsys):
    overrides = [*JOINT, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}"]
    run(load_config(CONFIG, overrides))
    assert main(["analyze", str(tmp_path / "run")]) == 0
    recorded = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())["checkpoint"]
    assert recorded["epochs"] == 2 and recorded["name"] == "epoch-000002" and len(recorded["best_sha256"]) == 64
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()

    # While another process holds the run folder (an extension training), analyze is refused and writes nothing.
    lock = FolderLock(tmp_path / "run")
    lock.acquire(False, "out:", "")
    try:
        before = snapshot(tmp_path / "run")
        assert main(["analyze", str(tmp_path / "run"), "--overwrite"]) == 2
        assert "is in use by" in only_error_line(capsys)
        assert snapshot(tmp_path / "run") == before
    finally:
        lock.release(remove=True)

    # An extension stopped part way: the checkpoint is past metrics.json; analyze refuses, report refuses.
    run_interrupted(monkeypatch, load_config(CONFIG, [*overrides, "trainer.resume=true", "trainer.epochs=4"]),
                    after_epochs=3)
    assert main(["analyze", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "checkpoint is after epoch 3 but metrics.json is of 2 epochs" in only_error_line(capsys)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report2")]) == 2
    line = only_error_line(capsys)
    assert "analysis.json: made from checkpoint epoch-000002 after epoch 2" in line and "epoch-000003" in line
    assert not (tmp_path / "report2").exists()

    # Finished and analysed again, the report is made.
    run(load_config(CONFIG, [*overrides, "trainer.resume=true", "trainer.epochs=4"]))
    assert main(["analyze", str(tmp_path / "run"), "--overwrite"]) == 0
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report2")]) == 0


# 5. report RUN RUN, report of a teacher folder


def test_report_refuses_a_run_given_twice_and_a_teacher_folder(tmp_path, capsys):
    overrides = [*TINY, "method.name=g2d", "smp.tau=[0]", "trainer.epochs=1", f"out={tmp_path / 'run'}",
                 f"teachers.root={tmp_path / 'teachers'}"]
    run(load_config(CONFIG, overrides))
    capsys.readouterr()
    twice = tmp_path / "run" / ".." / "run"
    assert main(["report", str(tmp_path / "run"), str(twice), "--out", str(tmp_path / "report")]) == 2
    assert f"{twice} is {tmp_path / 'run'} again" in only_error_line(capsys)
    assert main(["report", str(tmp_path / "teachers" / "teacher_pix"), "--out", str(tmp_path / "report")]) == 2
    assert "a teacher's folder" in only_error_line(capsys)
    assert not (tmp_path / "report").exists()


# 6. is the best-epoch column of the printed table: tests/test_cli.py::test_results_table_lists_methods_modalities_and_teachers


# 7. dataset.root recorded resolved


def test_config_yaml_records_dataset_root_resolved_and_a_relative_run_resumes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    from g2d.data.mfeat import EMBEDDED

    for view in EMBEDDED.glob("mfeat-*"):
        (data / view.name).symlink_to(view)
    monkeypatch.chdir(tmp_path)
    overrides = [*JOINT, "dataset.root=data", "out=run", "teachers.root=teachers"]
    run(load_config(CONFIG, overrides))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["dataset"]["root"] == str(data)
    # Analysed from another folder, the run finds its data.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["analyze", str(tmp_path / "run")]) == 0
    # Extended with the relative spelling from its own folder: the same data, so it resumes.
    monkeypatch.chdir(tmp_path)
    assert run(load_config(CONFIG, [*overrides, "trainer.resume=true", "trainer.epochs=3"]))["epochs"] == 3


# 8. The CPU avdigits config reads where the documented prepare writes


def test_avdigits_configs_read_the_folder_docs_prepare_into():
    prepared = re.search(r"g2d prepare avdigits .*?--out (\S+)", (ROOT / "docs" / "datasets.md").read_text(), re.S)
    for name in ("avdigits.yaml", "avdigits_cpu.yaml"):
        assert yaml.safe_load((ROOT / "configs" / name).read_text())["dataset"]["root"] == prepared.group(1)
