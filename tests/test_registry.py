"""Components are usable by name once registered in one place, and every unknown name or unsupported
combination is refused by the preflight check before anything is loaded, trained or written."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
from conftest import ROOT, TINY

from g2d.cli import main
from g2d.config import Choice
from g2d.errors import G2DError
from g2d.registry import Registry
from g2d.core.losses import task_loss
from g2d.data import DATASETS
from g2d.data.mfeat import load_mfeat
from g2d.methods import METHODS, Method
from g2d.results.analysis import ANALYSES, AnalysisInput
from g2d.results.report import run_label

CONFIG = str(ROOT / "configs" / "mfeat.yaml")


@pytest.fixture
def registries(monkeypatch):
    """The method and dataset registries as they are, restored after the test (so fakes do not leak)."""
    monkeypatch.setattr(METHODS, "entries", dict(METHODS.entries))
    monkeypatch.setattr(DATASETS, "entries", dict(DATASETS.entries))


@dataclass
class ScaledParams:
    weight: float = 1.0


def fake_method(**facts):
    """A method class defined the way a new method's own file defines it; ``facts`` fill its record."""

    class Scaled(Method):
        """Joint training with its loss multiplied by ``weight`` (a method a user could add in one file)."""

        name = "scaled"
        label = "Scaled-Train"
        Params = ScaledParams
        capturable = True

        def loss(self, output, batch, teachers):
            loss = self.params.weight * task_loss(output.logits, batch["label"], self.task)
            return loss, {"task": loss.detach()}

    for key, value in facts.items():
        setattr(Scaled, key, value)
    return METHODS.register("scaled")(Scaled)


def refused(capsys, argv, culprit, tmp_path):
    """``g2d argv`` exits 2 with one line naming ``culprit``, and writes nothing under ``tmp_path``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("g2d: error: ") and culprit in err[0], err
    assert not (tmp_path / "teachers").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    return err[0]


def test_a_method_registered_in_one_place_trains_by_name_and_is_labelled_from_its_record(
        tmp_path, tiny_overrides, capsys, registries):
    fake_method()
    assert main(["train", CONFIG, *tiny_overrides, "method.name=scaled", "method.scaled.weight=0.5",
                 "trainer.epochs=1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "scaled" and metrics["method_params"] == {"weight": 0.5}
    assert run_label(metrics) == "Scaled-Train"
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    message = refused(capsys, ["train", CONFIG, *TINY, f"out={empty / 'run'}", f"teachers.root={empty / 'teachers'}",
                               "method.name=scaled", "method.scaled.weigth=2"], "config key method.scaled.weigth", empty)
    assert "allowed: weight" in message


def test_a_dataset_registered_in_one_place_loads_by_name_with_typed_options(tmp_path, capsys, registries):
    class Views(Choice):
        pix = "pix"
        mor = "mor"

    @dataclass
    class PairOptions:
        drop: Views = Views.mor

    @DATASETS.register("pair", task="classification", folds=True, Options=PairOptions)
    def load_pair(config, options):
        return load_mfeat(dataclasses.replace(config, modalities=["pix", "mor", "fac"])).select(
            [v for v in ("pix", "mor", "fac") if v != options.drop])
    out = tmp_path / "runs"
    out.mkdir()
    base = ["train", CONFIG, *TINY, "dataset.name=pair", "dataset.modalities=[]", "method.name=joint",
            "trainer.epochs=1", f"out={out / 'run'}", f"teachers.root={out / 'teachers'}"]
    assert main([*base, "dataset.options.drop=pix"]) == 0
    assert json.loads((out / "run" / "metrics.json").read_text())["modalities"] == ["mor", "fac"]
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    base[-2:] = [f"out={empty / 'run'}", f"teachers.root={empty / 'teachers'}"]
    line = refused(capsys, [*base, "dataset.options.drop=fac"], "config key dataset.options.drop", empty)
    assert "unknown value 'fac' (choose from pix, mor)" in line
    refused(capsys, [*base, "dataset.options.keep=pix"], "config key dataset.options.keep", empty)


@pytest.mark.parametrize("overrides, culprit", [
    (["method.name=reconboost", "smp.enabled=true"], "config key smp.enabled: reconboost does not combine with SMP"),
    (["dataset.name=houses", "dataset.root=/nonexistent", "method.name=pmr"],
     "config key method.name: pmr supports classification only, not regression"),
    (["model.fusion=latte"], "config key model.fusion: unknown fusion 'latte'"),
    (["model.encoder.name=resnet"], "config key model.encoder.name: unknown encoder 'resnet'"),
    (["model.encoders.pix.name=mlpp"], "config key model.encoders.pix.name: unknown encoder 'mlpp'"),
    (["optim.name=sgdd"], "config key optim.name: unknown optimizer 'sgdd'"),
    (["method.name=g2dd"], "config key method.name: unknown method 'g2dd'"),
    (["dataset.name=mfet"], "config key dataset.name: unknown dataset 'mfet'"),
    (["smp.schedule=x"], "config key smp.schedule: unknown value 'x' (choose from ranked, dynamic)"),
    (["method.dlmg.strategy=learnt", "method.name=dlmg"], "config key method.dlmg.strategy: unknown value 'learnt'"),
    (["dataset.options.rows=3"], "config key dataset.options.rows: not an option of dataset mfeat"),
    (["dataset.name=cremad"], "config key dataset.root: cremad needs the folder written by g2d prepare cremad"),
    (["dataset.name=cremad", "dataset.root=/nonexistent", "dataset.folds=5"], "config key dataset.folds"),
])
def test_refusals_come_before_any_work(tmp_path, capsys, overrides, culprit):
    refused(capsys, ["train", CONFIG, *TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
                     *overrides], culprit, tmp_path)


def test_a_method_refusing_ddp_is_refused_under_torchrun_before_the_process_group(tmp_path, capsys, monkeypatch,
                                                                                   registries):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    fake_method(data_parallel="its step is its own")
    base = ["train", CONFIG, *TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}"]
    refused(capsys, [*base, "method.name=scaled"], "'scaled' cannot train on 2 processes: its step is its own",
            tmp_path)
    refused(capsys, [*base, "method.name=dlmg", "method.dlmg.strategy=learned"], "'dlmg' cannot train on 2 processes",
            tmp_path)


def test_a_method_refusing_smp_is_refused_by_its_record_not_its_name(tmp_path, capsys, registries):
    fake_method(accepts_smp="it balances the modalities itself")
    refused(capsys, ["train", CONFIG, *TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
                     "method.name=scaled", "smp.enabled=true"],
            "config key smp.enabled: scaled does not combine with SMP: it balances the modalities itself", tmp_path)


@pytest.mark.parametrize("grid, culprit", [
    (["method.name=joint,reconboost", "smp.enabled=true"], "config key smp.enabled: reconboost"),
    (["model.fusion=late,latte"], "config key model.fusion: unknown fusion 'latte'"),
    (["smp.suppression=freeze,melt"], "config key smp.suppression: unknown value 'melt'"),
    (["optim.nam=sgd"], "optim.nam"),
])
@pytest.mark.parametrize("mode", [[], ["--print-commands"], ["--teachers-only"]])
def test_a_sweep_checks_every_grid_point_before_anything_trains(tmp_path, capsys, grid, culprit, mode):
    out = tmp_path / "sweep"
    assert main(["sweep", CONFIG, *TINY, "--seeds", "0", "1", "--grid", *grid, "--out", str(out), *mode]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert not out.exists()


def test_every_method_has_a_paper_label_and_every_dataset_a_task_fact():
    assert {name: cls.label for name, cls in METHODS.items()}["g2d"] == "G²D"
    assert all(cls.label and cls.name == name for name, cls in METHODS.items())
    assert DATASETS["houses"].task == "regression" and DATASETS["csv"].task is None


def test_an_analysis_registered_in_one_place_is_written_by_g2d_analyze(tmp_path, tiny_overrides, capsys, monkeypatch):
    monkeypatch.setattr(ANALYSES, "entries", dict(ANALYSES.entries))

    @ANALYSES.register("test_rows")
    def test_rows(run: AnalysisInput) -> dict:
        """How many test rows the analyses saw, and how many of them the model gets right."""
        right = (run.test.logits.argmax(dim=-1) == run.test.labels).sum().item()
        return {"test_rows": {"rows": len(run.test.labels), "right": right}}

    assert main(["train", CONFIG, *tiny_overrides, "method.name=joint", "trainer.epochs=1"]) == 0
    assert main(["analyze", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [k for k in result if k != "checkpoint"][-1] == "test_rows" and result["test_rows"]["rows"] == 400  # 20 % of mfeat's 2000 rows
    assert result["test_rows"]["right"] / 400 == pytest.approx(metrics["test"]["multimodal"]["accuracy"])


@dataclass(frozen=True)
class WidgetRecord:
    build: object
    size: int = 1


def test_the_one_decorator_builds_each_kinds_record_and_names_a_class():
    widgets = Registry("widget", "model.widget", WidgetRecord)

    @widgets.register("big", size=3)
    def build_big():
        return "big"

    assert build_big() == "big" and widgets["big"] == WidgetRecord(build_big, size=3)  # the definition is unchanged
    things = Registry("thing", "model.thing")

    @things.register("round")
    class Round:
        pass

    assert things["round"] is Round and Round.name == "round"  # a class is its own record, named once
    with pytest.raises(ValueError, match="widget 'big' is registered twice"):
        widgets.register("big")(build_big)
    with pytest.raises(ValueError, match="thing 'oval': the class declares the name 'square'"):
        things.register("oval")(type("Oval", (), {"name": "square"}))
    with pytest.raises(TypeError):
        things.register("square", size=2)(type("Square", (), {}))  # a class's facts are its attributes
    with pytest.raises(G2DError, match=r"^config key model.widget: unknown widget 'small' \(available: big\)$"):
        widgets["small"]
