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
    capsys.readouterr()  # the first run's output (on a CPU with native bf16, the opt-in line) is not the refusal's
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
        # A killed worker's leader shows as a zombie while its other threads still exit; the kernel frees
        # its lock when the last one has, so the lock is tried until the same deadline.
        for lock in locks:
            descriptor = os.open(lock, os.O_RDWR)
            try:
                while not try_lock(descriptor) and time.monotonic() < deadline:
                    time.sleep(0.1)
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


# Issue 34: what a new user hit next


FACTORY = ["dataset.name=python", "dataset.modalities=[]", *TINY[1:]]


@pytest.mark.parametrize("factory, message", [
    ("with_nan", "config key dataset.factory: train item 3 'pix' holds a NaN or an infinity"),
    ("one_modality", "config key dataset.factory: SMP needs at least two modalities, the run has one (pix)"),
    ("one_class", "config key dataset.factory: the training split of dataset python holds one class (0)"),
])
def test_a_factory_whose_data_cannot_train_is_refused_before_anything_is_written(factory, message, tmp_path, capsys):
    for command in (["train", CONFIG, *FACTORY, f"dataset.factory=own_dataset:{factory}", f"out={tmp_path / 'run'}"],
                    ["sweep", CONFIG, *FACTORY, f"dataset.factory=own_dataset:{factory}", "--out", str(tmp_path / "sweep")]):
        assert main(command) == 2
        assert message in only_error_line(capsys)
        assert list(tmp_path.iterdir()) == []  # no teacher, no run folder, no sweep folder


def test_one_modality_chosen_in_the_config_is_refused_for_smp_before_data_is_read(tmp_path, capsys):
    assert main(["config", CONFIG, "dataset.modalities=[pix]"]) == 2
    assert "config key dataset.modalities: SMP needs at least two modalities" in only_error_line(capsys)
    assert main(["config", CONFIG, "dataset.modalities=[pix]", "smp.enabled=false"]) == 0


def test_a_sweep_calls_a_dataset_factory_once(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls"
    monkeypatch.setenv("G2D_TEST_FACTORY_CALLS", str(calls))
    assert main(["sweep", CONFIG, *FACTORY, "dataset.factory=own_dataset:counted", "trainer.epochs=1", "smp.tau=[0]",
                 "--grid", "method.name=joint,g2d", "--out", str(tmp_path / "sweep")]) == 0
    assert calls.read_text().splitlines() == ["call"]  # teachers, two runs: one read of the data


@pytest.mark.parametrize("command", [["train"], ["config"], ["sweep"]])
def test_an_unknown_wandb_mode_is_refused_by_preflight(command, tmp_path, capsys):
    where = {"train": [f"out={tmp_path / 'run'}"], "config": [], "sweep": ["--out", str(tmp_path / "sweep")]}
    argv = [*command, CONFIG, *JOINT, "trainer.loggers=[wandb]", "trainer.wandb.mode=bogus", *where[command[0]]]
    assert main(argv) == 2
    assert only_error_line(capsys) == ("g2d: error: config key trainer.wandb.mode: 'bogus' is not a W&B mode "
                                      "(choose one of online, offline, disabled, shared, dryrun, run)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (["method.name=nope"], "config key method.name: unknown method 'nope'"),
    (["model.fusion=nope"], "config key model.fusion: unknown fusion 'nope'"),
    (["trainer.loggers=[neptune]"], "config key trainer.loggers: unknown logger 'neptune'"),
])
def test_config_refuses_what_train_refuses(overrides, message, tmp_path, capsys):
    assert main(["train", CONFIG, *JOINT, *overrides, f"out={tmp_path / 'run'}"]) == 2
    refused = only_error_line(capsys)
    assert message in refused
    assert main(["config", CONFIG, *JOINT, *overrides]) == 2
    assert only_error_line(capsys) == refused


def test_config_usage_says_overrides_are_optional(capsys):
    with pytest.raises(SystemExit):
        main(["config"])
    assert "required: config\n" in capsys.readouterr().err


def drop_keys(saved: dict, keys: list[str]) -> dict:
    for key in keys:
        section, name = key.split(".")
        saved[section].pop(name)
    return saved


OLDER = ["dataset.augment", "trainer.select"]  # keys an earlier g2d did not write


def test_a_run_from_an_earlier_version_resumes_with_new_keys_at_their_defaults(tmp_path, monkeypatch, capsys):
    import torch

    from g2d.training import checkpoint

    config = load_config(CONFIG, [*JOINT, f"out={tmp_path / 'run'}"])
    run_interrupted(monkeypatch, config, after_epochs=1)
    state_file = checkpoint.committed(tmp_path / "run") / checkpoint.STATE
    state = torch.load(state_file, weights_only=True)
    state["config"] = json.dumps(drop_keys(json.loads(state["config"]), OLDER))
    torch.save(state, state_file)
    (state_file.parent / checkpoint.HASHES).unlink()  # an earlier g2d recorded no hashes
    before = snapshot(tmp_path / "run")
    resume = ["train", CONFIG, *JOINT, f"out={tmp_path / 'run'}", "trainer.resume=true"]
    assert main([*resume, "trainer.select=last"]) == 2
    assert only_error_line(capsys) == (
        f"g2d: error: config key trainer.select: the run in {tmp_path / 'run'} was written by an earlier g2d without "
        "the keys dataset.augment, trainer.select; it continues only with them at their defaults (drop "
        "trainer.select='last') or starts anew in another folder")
    assert snapshot(tmp_path / "run") == before
    assert main(resume) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


def test_a_sweep_run_from_an_earlier_version_is_kept_with_new_keys_at_their_defaults(tmp_path, capsys):
    sweep = ["sweep", CONFIG, *JOINT, "trainer.epochs=1", "--out", str(tmp_path / "sweep")]
    assert main(sweep) == 0
    saved = tmp_path / "sweep" / "run" / "seed0" / "config.yaml"
    saved.write_text(yaml.safe_dump(drop_keys(yaml.safe_load(saved.read_text()), OLDER)))
    capsys.readouterr()
    assert main([*sweep[:-2], "trainer.select=last", *sweep[-2:]]) == 2
    assert only_error_line(capsys).startswith(f"g2d: error: config key trainer.select: {saved} was written by an "
                                              "earlier g2d without the keys dataset.augment, trainer.select;")
    assert main(sweep) == 0  # continues: nothing left to run


@pytest.mark.parametrize("print_commands", [False, True])
def test_a_sweep_of_several_seeds_with_one_teachers_root_is_refused_before_the_first_run(print_commands, tmp_path,
                                                                                        capsys):
    argv = ["sweep", CONFIG, *TINY, f"teachers.root={tmp_path / 'teachers'}", "--seeds", "0", "1",
            "--grid", "method.name=joint,g2d", "--out", str(tmp_path / "sweep"), *(["--print-commands"] * print_commands)]
    assert main(argv) == 2
    assert only_error_line(capsys).startswith(
        f"g2d: error: config key teachers.root: one teachers folder ({tmp_path / 'teachers'}) for seeds 0, 1, but a "
        "teacher is trained under one seed;")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("held", ["report", "sweep", "run", "foreign"])
def test_demo_out_is_refused_when_it_holds_another_kind_of_folder(held, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    name = {"report": "report.html", "sweep": "sweep.json", "run": "metrics.json", "foreign": "notes.txt"}[held]
    (out / name).write_text("{}")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(out), "trainer.epochs=1"]) == 2
    assert f"--out {out}: holds" in only_error_line(capsys)
    assert snapshot(tmp_path) == before


def test_readme_names_the_extras_the_makefile_installs():
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', (ROOT / "Makefile").read_text()).group(1).split(",")
    readme = (ROOT / "README.md").read_text()
    words = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"`make demo` and `make test` install all {words[len(installed)]}" in " ".join(readme.split())
    assert all(f"`{extra}`" in readme for extra in installed)
