"""``g2d sweep``: the cross product over seeds, shared teachers, skipped finished runs, one table."""

import hashlib
import json
import shlex
import statistics

import pytest
from conftest import ROOT, TINY

import g2d.runs.sweep as sweep
from g2d.cli import main
from g2d.config import load_config
from g2d.errors import G2DError
from g2d.runs.sweep import Point, grid_points, run_sweep
from g2d.training.threads import available_cores

CONFIG = ROOT / "configs" / "mfeat.yaml"
QUICK = [*TINY, "trainer.epochs=1"]


def test_grid_is_the_cross_product_and_keeps_bracketed_values_whole():
    points = grid_points(["method.name=joint,g2d", "smp.tau=[1],[2,3]"])
    assert [p.overrides for p in points] == [
        ["method.name=joint", "smp.tau=[1]"], ["method.name=joint", "smp.tau=[2,3]"],
        ["method.name=g2d", "smp.tau=[1]"], ["method.name=g2d", "smp.tau=[2,3]"]]
    assert len({p.folder for p in points}) == 4
    for bad in (["method.name"], ["seed=1,2"], ["a=1", "a=2"], ["a=1,,2"]):
        with pytest.raises(G2DError, match="--grid"):
            grid_points(bad)


def test_teacher_key_hashes_only_settings_that_differ_from_the_defaults():
    """A new key left at its default (as ``dataset.normalize`` was when added) moves no sweep's teachers."""
    def digest(settings):
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]

    assert sweep.teacher_key(load_config(None, [])) == digest({})
    assert sweep.teacher_key(load_config(None, ["dataset.normalize=false", "method.name=joint"])) == digest({})
    assert sweep.teacher_key(load_config(None, ["dataset.normalize=true"])) == digest({"dataset.normalize": True})


def test_sweep_shares_teachers_skips_finished_runs_and_tabulates_mean_and_std(tmp_path, monkeypatch):
    points = grid_points(["method.name=joint,g2d"])
    results = run_sweep(CONFIG, QUICK, points, [0, 1], tmp_path, log=lambda _: None)
    # One teachers folder per seed, shared by both methods (they differ only in the method).
    assert sorted(p.name.split("_")[1] for p in (tmp_path / "teachers").iterdir()) == ["seed0", "seed1"]
    g2d_runs = results["method.name=g2d"]
    assert [r["seed"] for r in g2d_runs] == [0, 1]
    for run in g2d_runs:
        folder = tmp_path / "method.name=g2d" / f"seed{run['seed']}"
        assert json.loads((folder / "metrics.json").read_text()) == run
    summary = json.loads((tmp_path / "sweep.json").read_text())
    accuracy = [r["test"]["multimodal"]["accuracy"] for r in g2d_runs]
    stats = summary["points"][1]["test"]["multimodal"]["accuracy"]
    assert stats == {"mean": statistics.mean(accuracy), "std": statistics.stdev(accuracy), "values": accuracy}
    row = f"| method.name=g2d | 2 | {100 * statistics.mean(accuracy):.1f} ± {100 * statistics.stdev(accuracy):.1f} |"
    assert row in (tmp_path / "sweep.md").read_text()
    assert "method.name=joint" in (tmp_path / "sweep.csv").read_text().splitlines()[1]

    # A second sweep runs nothing; with one metrics file gone, it reruns (resumes) that run alone.
    calls = []
    original = sweep.run_one
    monkeypatch.setattr(sweep, "run_one", lambda path, overrides: calls.append(overrides) or original(path, overrides))
    assert run_sweep(CONFIG, QUICK, points, [0, 1], tmp_path, log=lambda _: None) == results
    assert calls == []
    (tmp_path / "method.name=joint" / "seed1" / "metrics.json").unlink()
    again = run_sweep(CONFIG, QUICK, points, [0, 1], tmp_path, log=lambda _: None)
    assert len(calls) == 1 and "seed=1" in calls[0] and "method.name=joint" in calls[0]
    assert again["method.name=joint"][1]["test"] == results["method.name=joint"][1]["test"]


def test_a_finished_run_of_another_config_is_an_error_and_stays(tmp_path):
    points = [Point("joint", ["method.name=joint"])]
    run_sweep(CONFIG, QUICK, points, [0], tmp_path, log=lambda _: None)
    before = (tmp_path / "joint" / "seed0" / "metrics.json").read_bytes()
    with pytest.raises(G2DError, match="config key optim.lr is 0.05 there but 0.1"):
        run_sweep(CONFIG, [*QUICK, "optim.lr=0.1"], points, [0], tmp_path, log=lambda _: None)
    assert (tmp_path / "joint" / "seed0" / "metrics.json").read_bytes() == before


def test_print_commands_gives_teachers_first_then_one_train_command_per_run(tmp_path, capsys):
    assert main(["sweep", str(CONFIG), *TINY, "--seeds", "0", "1", "--grid", "method.name=joint,g2d",
                 "--out", str(tmp_path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#") and lines[1].endswith("--teachers-only") and lines[2].startswith("#")
    runs = [shlex.split(line) for line in lines[3:]]
    assert len(runs) == 4 and all(r[:3] == ["g2d", "train", str(CONFIG)] for r in runs)
    configs = [load_config(CONFIG, r[3:]) for r in runs]
    assert sorted((c.method_name, c.seed) for c in configs) == [("g2d", 0), ("g2d", 1), ("joint", 0), ("joint", 1)]
    assert len({c.teachers.root for c in configs}) == 2  # one per seed
    assert not any(tmp_path.iterdir())  # printing runs nothing


@pytest.mark.slow
def test_two_workers_give_the_runs_one_worker_gives(tmp_path, capsys):
    args = ["sweep", str(CONFIG), *QUICK, "--grid", "method.name=g2d"]
    assert main([*args, "--seeds", "0", "1", "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert "| method.name=g2d | 2 |" in capsys.readouterr().out
    assert main([*args, "--seeds", "0", "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / n / "method.name=g2d" / "seed0" / "metrics.json").read_text()) for n in ("one", "two"))
    for modality in ("pix", "mor"):
        assert two["teachers"][modality]["accuracy"] == pytest.approx(one["teachers"][modality]["accuracy"], abs=0.01)
    assert two["test"]["multimodal"]["accuracy"] == pytest.approx(one["test"]["multimodal"]["accuracy"], abs=0.01)
    # One thread budget for the whole sweep: two workers each take half the cores, one worker all of them
    # (the demo-sized MLP then computes with one thread of it: threads.SMALL_STEP_FLOPS).
    assert two["environment"]["thread_budget"] == max(1, available_cores() // 2)
    assert one["environment"]["thread_budget"] == available_cores()
    assert one["environment"]["threads"] == two["environment"]["threads"] == 1
