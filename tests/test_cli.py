"""The command line end to end on tiny runs: outputs, contracts and readable errors."""

import json

import pytest
from conftest import ROOT
from safetensors.torch import load_file

from g2d.cli import main

CONFIG = str(ROOT / "configs" / "mfeat.yaml")


def test_train_writes_metrics_teachers_and_checkpoints(tmp_path, tiny_overrides, capsys):
    assert main(["train", CONFIG, *tiny_overrides, "smp.schedule=dynamic", "smp.tau=[1]"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"dataset", "method", "task", "modalities", "fusion", "seed", "epochs", "best_epoch", "wall_seconds",
            "test", "val", "teachers"} <= set(metrics)
    assert (metrics["dataset"], metrics["method"], metrics["task"]) == ("mfeat", "g2d", "classification")
    assert metrics["modalities"] == ["pix", "mor"] and metrics["fusion"] == "late" and metrics["epochs"] == 3
    assert 0 <= metrics["best_epoch"] < 3
    for value in [metrics["test"]["multimodal"]["accuracy"], metrics["val"]["multimodal"]["accuracy"],
                  *(v["accuracy"] for v in metrics["test"]["per_modality"].values()),
                  *(v["accuracy"] for v in metrics["teachers"].values())]:
        assert 0.0 <= value <= 1.0
    assert set(metrics["teachers"]) == {"pix", "mor"}
    assert metrics["smp"]["enabled"] and metrics["smp"]["tau"] == [1]
    for modality in ("pix", "mor"):
        folder = tmp_path / "teachers" / f"teacher_{modality}"
        meta = json.loads((folder / "teacher.json").read_text())
        assert meta["modality"] == modality and meta["num_classes"] == 10
        assert any(key.startswith(f"encoders.{modality}.") for key in load_file(str(folder / "teacher.safetensors")))
        assert (folder / "metrics.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    assert list((tmp_path / "run" / "tb").iterdir())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["train"]["kappa/pix"] + history[0]["train"]["kappa/mor"] >= 1.0 - 1e-6
    assert history[1]["train"]["kappa/pix"] == history[1]["train"]["kappa/mor"] == 1.0
    assert "multimodal" in capsys.readouterr().out


def test_demo_writes_one_folder_per_method(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "trainer.epochs=2", "trainer.progress=false",
                 "model.encoder.hidden=[16]"]) == 0
    for folder in ("joint", "g2d", "teacher_pix", "teacher_mor"):
        assert (out / folder / "metrics.json").is_file(), folder
    table = capsys.readouterr().out
    assert "joint" in table and "g2d" in table and "teachers" in table


def test_teacher_trained_on_other_classes_is_refused(tmp_path, tiny_overrides, capsys):
    assert main(["train", CONFIG, *tiny_overrides, "method.name=joint", "smp.enabled=true"]) == 0
    meta_path = tmp_path / "teachers" / "teacher_mor" / "teacher.json"
    meta = json.loads(meta_path.read_text())
    meta["num_classes"] = 6
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["train", CONFIG, *tiny_overrides, f"out={tmp_path / 'student'}"]) == 2
    err = capsys.readouterr().err
    assert "num_classes" in err and "teacher_mor" in err and "Traceback" not in err


def test_teacher_with_other_encoder_is_refused(tmp_path, tiny_overrides, capsys):
    assert main(["train", CONFIG, *tiny_overrides, "method.name=umt"]) == 0
    capsys.readouterr()
    assert main(["train", CONFIG, *tiny_overrides, "model.encoder.hidden=[8]", f"out={tmp_path / 'student'}"]) == 2
    assert "encoder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["dataset.modalities=[pix,sound]"], "dataset.modalities"),
        (["trainer.epoch=2"], "trainer.epoch"),
        (["method.g2d.alpah=2"], "method.g2d.alpah"),
        (["method.alpha=2"], "method.g2d.alpha"),
        (["method.name=magic"], "method.name"),
        (["method.g2d.feature_reduction=l2"], "method.g2d.feature_reduction"),
        (["trainer.select=best"], "trainer.select"),
        (["model.fusion=glue"], "model.fusion"),
        (["smp.tau=[1,2]"], "smp.tau"),
        (["dataset.root=/nonexistent/mfeat"], "/nonexistent/mfeat"),
    ],
)
def test_bad_input_is_one_readable_line(tmp_path, tiny_overrides, capsys, arguments, fragment):
    assert main(["train", CONFIG, *tiny_overrides, *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and err.startswith("g2d: error:")


def test_missing_config_file(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err




def test_results_table_lists_methods_modalities_and_teachers():
    from g2d.results.tables import results_table

    metrics = {"dataset": "mfeat", "task": "classification", "modalities": ["pix", "mor"],
               "test": {"multimodal": {"accuracy": 0.9825}, "per_modality": {"pix": {"accuracy": 0.95},
                                                                              "mor": {"accuracy": 0.3375}}},
               "teachers": {"pix": {"accuracy": 0.978}, "mor": {"accuracy": 0.715}}, "best_epoch": 7, "epochs": 60}
    lines = results_table({"joint": metrics}).splitlines()
    assert lines[1].split() == ["method", "multimodal", "pix", "mor", "best", "epoch"]
    assert lines[3].split() == ["joint", "98.2", "95.0", "33.8", "7", "of", "60"]
    assert lines[4].split() == ["teachers", "-", "97.8", "71.5", "-"]


@pytest.mark.parametrize("command, hint", [
    (["train", "configs/mfeat.yaml"], "(resume with trainer.resume=true)"),
    (["sweep", "configs/mfeat.yaml", "--seeds", "0", "--out", "x"], "(run the same command again to continue)"),
    (["tune", "configs/mfeat.yaml", "--space", "optim.lr=1e-3:1e-1:log", "--out", "x", "--trials", "2"], "the interrupted trial is retried)"),
    (["demo"], "(run the same command again to continue)"),
])
def test_ctrl_c_says_how_this_command_continues(monkeypatch, capsys, command, hint):
    """A sweep, a tune or the demo continues by running the same command; only a single run takes the flag."""
    import g2d.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "dispatch", interrupted)
    assert main(command) == 130
    line = capsys.readouterr().err.strip()
    assert line.startswith("g2d: interrupted; completed epochs are checkpointed") and line.endswith(hint)
