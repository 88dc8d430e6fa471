"""Every command as safe as ``g2d train`` (issue 24): analyze, report, sweep and prepare.

Each bad input ends with exit status 2, one ``g2d: error:`` line naming the flag, key or file as
the user typed it, no traceback, and every folder involved byte for byte unchanged. Each command
killed with SIGKILL (at a named ``g2d.faults`` point) and then run again ends with the same files
as an uninterrupted run, and leaves nothing half-written behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from test_avdigits import _synthetic_sources
from test_reliability import refused, snapshot

from g2d.cli import main
from g2d.folders import MARKER, kind_of

CONFIG = str(ROOT / "configs" / "mfeat.yaml")
JOINT = [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=1"]
AVDIGITS = ["--test-images", "20"]


def g2d_process(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``g2d ARGS`` in a child process that SIGKILLs itself at the fault point ``kill_at``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"G2D_TEST_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run([sys.executable, "-m", "g2d.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def hidden_siblings(folder: Path) -> list[str]:
    """What a command building beside ``folder`` may have left there."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run (analysed), a report of it, a prepared dataset and its sources, made once."""
    root = tmp_path_factory.mktemp("world")
    assert main(["train", CONFIG, *JOINT, f"out={root / 'run'}", f"teachers.root={root / 'teachers'}"]) == 0
    assert main(["analyze", str(root / "run")]) == 0
    assert main(["report", str(root / "run"), "--out", str(root / "report")]) == 0
    sources = _synthetic_sources(root / "sources")
    assert main(["prepare", "avdigits", "--fsdd", str(sources[0]), "--mnist", str(sources[1]), "--noise",
                 str(sources[2]), "--out", str(root / "data"), *AVDIGITS]) == 0
    return root


@pytest.fixture
def copies(tmp_path, world):
    """A fresh copy of the world for a test that must leave it unchanged."""
    for name in ("run", "report", "data", "sources"):
        subprocess.run(["cp", "-a", str(world / name), str(tmp_path / name)], check=True)
    return tmp_path


def prepare_args(root: Path, out: Path, *extra: str) -> list[str]:
    sources = root / "sources"
    return ["prepare", "avdigits", "--fsdd", str(sources / "fsdd"), "--mnist", str(sources / "mnist"), "--noise",
            str(sources / "noise"), "--out", str(out), *AVDIGITS, *extra]


def test_every_folder_says_what_wrote_it(world):
    kinds = {name: json.loads((world / name / MARKER).read_text())["kind"] for name in ("run", "report", "data")}
    assert kinds == {"run": "run", "report": "report", "data": "prepared"}
    marker = json.loads((world / "run" / "analysis" / MARKER).read_text())
    assert marker["kind"] == "analysis" and marker["command"] == " ".join(sys.argv) and marker["version"]


BAD_INPUTS = {
    "analyze --device bogus": (lambda r: ["analyze", str(r / "run"), "--device", "bogus", "--overwrite"], ["--device"]),
    "analyze --seed -1": (lambda r: ["analyze", str(r / "run"), "--seed", "-1", "--overwrite"], ["--seed", "-1"]),
    "analyze an analysed run": (lambda r: ["analyze", str(r / "run")], ["analysis.json", "--overwrite"]),
    "report --out RUN": (lambda r: ["report", str(r / "run"), "--out", str(r / "run")], ["--out", "a training run"]),
    "report --out RUN/report": (lambda r: ["report", str(r / "run"), "--out", str(r / "run" / "report")],
                                ["--out", "inside", "training run"]),
    "report --out RUN --overwrite": (lambda r: ["report", str(r / "run"), "--out", str(r / "run"), "--overwrite"],
                                     ["--out", "a training run"]),
    "report --out DATASET --overwrite": (lambda r: ["report", str(r / "run"), "--out", str(r / "data"), "--overwrite"],
                                         ["--out", "a prepared dataset"]),
    "report --out REPORT": (lambda r: ["report", str(r / "run"), "--out", str(r / "report")], ["--overwrite"]),
    "sweep --out RUN": (lambda r: ["sweep", CONFIG, *JOINT, "--out", str(r / "run")], ["--out", "a training run"]),
    "sweep --out REPORT": (lambda r: ["sweep", CONFIG, *JOINT, "--out", str(r / "report")], ["--out", "a report"]),
    "sweep --grid typo --print-commands": (
        lambda r: ["sweep", CONFIG, *JOINT, "--grid", "method.nme=joint,g2d", "--out", str(r / "s"),
                   "--print-commands"], ["method.nme"]),
    "sweep --grid typo --teachers-only": (
        lambda r: ["sweep", CONFIG, *JOINT, "--grid", "method.nme=joint,g2d", "--out", str(r / "s"),
                   "--teachers-only"], ["method.nme"]),
    "sweep --seeds 0 0": (lambda r: ["sweep", CONFIG, *JOINT, "--seeds", "0", "0", "--out", str(r / "s")],
                          ["--seeds", "0"]),
    "prepare --out RUN --overwrite": (lambda r: prepare_args(r, r / "run", "--overwrite"), ["--out", "a training run"]),
    "prepare --out REPORT --overwrite": (lambda r: prepare_args(r, r / "report", "--overwrite"), ["--out", "a report"]),
    "prepare --out RUN/data": (lambda r: prepare_args(r, r / "run" / "data"), ["--out", "inside", "training run"]),
    "prepare --out DATASET": (lambda r: prepare_args(r, r / "data"), ["--out", "--overwrite"]),
    "prepare --max-train 0": (lambda r: prepare_args(r, r / "new", "--max-train", "0"), ["--max-train"]),
    "prepare --max-test 0": (lambda r: prepare_args(r, r / "new", "--max-test", "0"), ["--max-test"]),
    "prepare --test-images 0": (lambda r: prepare_args(r, r / "new", "--test-images", "0"), ["--test-images"]),
    "prepare --test-images 99": (lambda r: prepare_args(r, r / "new", "--test-images", "99"), ["--test-images 99"]),
    "train out=REPORT": (lambda r: ["train", CONFIG, *JOINT, f"out={r / 'report'}", "trainer.overwrite=true"],
                         ["out:", "a report"]),
    "train out=DATASET": (lambda r: ["train", CONFIG, *JOINT, f"out={r / 'data'}"], ["out:", "a prepared dataset"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(copies, capsys, case):
    arguments, fragments = BAD_INPUTS[case]
    before = snapshot(copies)
    refused(capsys, main(arguments(copies)), *fragments)
    assert snapshot(copies) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_analyze_on_cuda_without_cuda(copies, capsys, device):
    before = snapshot(copies)
    refused(capsys, main(["analyze", str(copies / "run"), "--device", device, "--overwrite"]), "--device", device)
    assert snapshot(copies) == before


@pytest.mark.parametrize("damage", ["{not json", ""])
def test_analyze_a_run_whose_metrics_are_not_json(copies, capsys, damage):
    (copies / "run" / "metrics.json").write_text(damage)
    before = snapshot(copies)
    refused(capsys, main(["analyze", str(copies / "run"), "--overwrite"]), str(copies / "run" / "metrics.json"),
            "not valid JSON")
    assert snapshot(copies) == before


def test_analysis_folder_holding_something_else_is_refused(copies, capsys):
    subprocess.run(["rm", "-r", str(copies / "run" / "analysis")], check=True)
    (copies / "run" / "analysis").mkdir()
    (copies / "run" / "analysis" / "notes.txt").write_text("mine\n")
    before = snapshot(copies)
    refused(capsys, main(["analyze", str(copies / "run"), "--overwrite"]), str(copies / "run" / "analysis"))
    assert snapshot(copies) == before


@pytest.mark.parametrize("extra, fragment", [
    (["method.name=joint", "smp.auto.patience=3"], "smp.auto.patience has no effect: SMP is off"),
    (["method.name=g2d", "smp.enabled=false", "smp.schedule=dynamic"], "smp.schedule has no effect: SMP is off"),
    (["method.name=g2d", "smp.tau=[0]", "smp.auto.min_delta=0.1"], "smp.auto.min_delta has no effect"),
])
def test_settings_without_effect_are_a_visible_warning(tmp_path, capsys, extra, fragment):
    assert main(["train", CONFIG, *TINY, "trainer.epochs=1", *extra, f"out={tmp_path / 'run'}"]) == 0
    assert fragment in capsys.readouterr().err


# Issue 30, item 6: method and SMP settings refused at preflight, before any teacher trains, naming the key.
SETTINGS_REFUSED = [
    (["method.name=g2d", "method.g2d.alpha=-1"], "config key method.g2d.alpha: must be a finite number >= 0, got -1.0"),
    (["method.name=g2d", "method.g2d.beta=nan"], "config key method.g2d.beta: must be a finite number >= 0, got nan"),
    (["method.name=g2d", "method.g2d.temperature=0"], "config key method.g2d.temperature: must be a finite number > 0"),
    (["method.name=umt", "method.umt.feature_weight=-10"], "config key method.umt.feature_weight: must be a finite"),
    (["method.name=ogm_ge", "method.ogm_ge.alpha=inf"], "config key method.ogm_ge.alpha: must be a finite number"),
    (["method.name=pmr", "method.pmr.momentum=1.5"], "config key method.pmr.momentum: must be in [0, 1], got 1.5"),
    (["method.name=mses", "method.mses.smoothing=1"], "config key method.mses.smoothing: must be in [0, 1)"),
    (["method.name=mmpareto", "method.mmpareto.gamma=0"], "config key method.mmpareto.gamma: must be a finite number > 0"),
    (["method.name=reconboost", "method.reconboost.stage_epochs=0"], "config key method.reconboost.stage_epochs: must be"),
    (["method.name=dlmg", "method.dlmg.initial_weight=2"], "config key method.dlmg.initial_weight: must be in [0.05, 0.95]"),
    (["method.name=mla", "method.mla.fixed_weights=[0.5,-1]"], "config key method.mla.fixed_weights: must be a finite"),
    (["method.name=agm", "method.agm.grad_clip=-1"], "config key method.agm.grad_clip: must be a finite number > 0"),
    (["method.name=g2d", "smp.partial_alpha=-1"], "config key smp.partial_alpha: must be a finite number >= 0"),
    (["method.name=g2d", "trainer.epochs=3", "smp.tau=[3]"], "config key smp.tau: phases [3] take 3 epochs and training has 3"),
    (["method.name=umt", "smp.enabled=true", "trainer.epochs=1", "smp.tau=[10]"], "config key smp.tau: phases [10]"),
    (["method.name=g2d", "dataset.modalities=[pix,fou,mor]", "trainer.epochs=2", "smp.tau=[1,1]"],
     "config key smp.tau: phases [1, 1] take 2 epochs and training has 2"),
]


@pytest.mark.parametrize("extra, message", SETTINGS_REFUSED)
def test_method_settings_are_refused_before_any_teacher_trains(tmp_path, capsys, extra, message):
    arguments = ["train", CONFIG, *TINY, *extra, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}"]
    refused(capsys, main(arguments), message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", SETTINGS_REFUSED[:3] + SETTINGS_REFUSED[-3:-1])
def test_method_settings_are_refused_by_the_python_run_too(tmp_path, extra, message):
    import g2d

    config = g2d.load_config(CONFIG, [*TINY, *extra, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 't'}"])
    with pytest.raises(g2d.G2DError) as refusal:
        g2d.run(config)
    assert str(refusal.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_phases_that_train_every_modality_are_only_a_warning(tmp_path, capsys):
    """The dynamic schedule ranks each batch anew: phases as long as training still train both modalities."""
    assert main(["train", CONFIG, *TINY, "trainer.epochs=1", "method.name=umt", "smp.enabled=true",
                 "smp.schedule=dynamic", "smp.tau=[1]", f"out={tmp_path / 'run'}"]) == 0
    assert "smp.tau [1] adds up to 1 epochs, at least trainer.epochs=1" in capsys.readouterr().err


def test_settings_with_effect_give_no_warning(tmp_path, capsys):
    assert main(["train", CONFIG, *TINY, "trainer.epochs=2", "method.name=g2d", "smp.tau=auto",
                 "smp.auto.patience=1", f"out={tmp_path / 'run'}"]) == 0
    assert "no effect" not in capsys.readouterr().err


def test_overwrite_replaces_the_commands_own_output(copies):
    before = snapshot(copies / "report")
    (copies / "report" / "stale.png").write_bytes(b"old")  # replaced whole, not merged into
    assert main(["report", str(copies / "run"), "--out", str(copies / "report"), "--overwrite"]) == 0
    assert snapshot(copies / "report") == {k: v for k, v in before.items() if k != MARKER} | {
        MARKER: (copies / "report" / MARKER).read_bytes()}
    assert main(["analyze", str(copies / "run"), "--overwrite", "--seed", "1"]) == 0
    assert kind_of(copies / "run" / "analysis") == "analysis" and hidden_siblings(copies / "run" / "analysis") == []


def outputs(folder: Path) -> dict:
    """A command's files with their bytes, the marker (which names the command line) left out."""
    return {k: v for k, v in snapshot(folder).items() if k != MARKER}


@pytest.mark.parametrize("point", ["folders.built:1", "folders.swap:1"])
def test_killed_analyze_then_again_gives_the_same_files(copies, point):
    assert main(["analyze", str(copies / "run"), "--overwrite"]) == 0  # uninterrupted, in this folder
    expected = outputs(copies / "run" / "analysis")
    killed = g2d_process("analyze", str(copies / "run"), "--overwrite", kill_at=point)
    assert killed.returncode == -9, killed.stderr
    assert main(["analyze", str(copies / "run"), "--overwrite"]) == 0
    assert outputs(copies / "run" / "analysis") == expected and hidden_siblings(copies / "run" / "analysis") == []


@pytest.mark.parametrize("point", ["folders.built:1", "folders.swap:1"])
def test_killed_report_then_again_gives_the_same_files(copies, point):
    expected = outputs(copies / "report")
    killed = g2d_process("report", str(copies / "run"), "--out", str(copies / "report"), "--overwrite", kill_at=point)
    assert killed.returncode == -9, killed.stderr
    if point == "folders.swap:1":  # killed between the two renames: the previous report is hidden, then put back
        assert not (copies / "report").exists()
    assert main(["report", str(copies / "run"), "--out", str(copies / "report"), "--overwrite"]) == 0
    assert outputs(copies / "report") == expected and hidden_siblings(copies / "report") == []


@pytest.mark.parametrize("point", ["folders.built:1", "folders.swap:1"])
def test_killed_prepare_then_again_gives_the_same_bytes(copies, point):
    assert main(prepare_args(copies, copies / "data", "--overwrite")) == 0  # uninterrupted, from these sources
    expected = outputs(copies / "data")
    killed = g2d_process(*prepare_args(copies, copies / "data", "--overwrite"), kill_at=point)
    assert killed.returncode == -9, killed.stderr
    assert hidden_siblings(copies / "data")  # what the killed preparation left beside --out ...
    assert main(prepare_args(copies, copies / "data", "--overwrite")) == 0
    assert outputs(copies / "data") == expected and hidden_siblings(copies / "data") == []  # ... is cleaned


def sweep_table(folder: Path) -> list[str]:
    """sweep.md without its wall-clock column."""
    return [line.rsplit("|", 2)[0] for line in (folder / "sweep.md").read_text().splitlines()]


@pytest.mark.parametrize("point", ["checkpoint.after_commit:2", "atomic_write:9"])
def test_killed_sweep_then_again_gives_the_same_table(tmp_path, point):
    arguments = ["sweep", CONFIG, *JOINT, "--grid", "optim.lr=0.05,0.1", "--out"]
    assert main([*arguments, str(tmp_path / "whole")]) == 0
    killed = g2d_process(*arguments, str(tmp_path / "killed"), kill_at=point)
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "killed" / "sweep.md").exists()
    assert main([*arguments, str(tmp_path / "killed")]) == 0
    assert sweep_table(tmp_path / "killed") == sweep_table(tmp_path / "whole")
    assert not [p for p in (tmp_path / "killed").rglob("*") if p.name.endswith((".tmp", ".new"))]


def test_two_processes_marking_one_folder_at_once_both_succeed(tmp_path, monkeypatch):
    """Two `g2d tune` processes joining one study mark its folder together: the other process's mark lands
    between this one's write and rename, and neither may fail on the other's temporary file."""
    from g2d import folders

    real_replace = os.replace

    def the_other_process_marks_first(source, target):
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "getpid", lambda: 99999)
        folders.mark(tmp_path, "tune")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", the_other_process_marks_first)
    folders.mark(tmp_path, "tune")
    assert json.loads((tmp_path / folders.MARKER).read_text())["kind"] == "tune"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folders.MARKER]
