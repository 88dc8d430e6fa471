"""Each config key declares its role once (g2d.config.Role); resume, sweep, report and teacher runs derive from it.

And preflight is the one check of a config: run() relies on the Checked it returns (issue 32).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from g2d.config import (
    ExperimentConfig,
    STUDENT,
    keys_with,
    load_config,
    role_of,
    schema_fields,
    section,
    section_type,
    setting,
    to_dict,
    walk_roles,
)
from g2d.errors import G2DError
from g2d.results.report import RunRecord, group_runs
from g2d.runs.sweep import teacher_key
from g2d.training.checkpoint import check_resume
from g2d.training.teachers import teacher_run_config

TRACKING = {"trainer.loggers", "trainer.mlflow.tracking_uri", "trainer.mlflow.experiment",
            "trainer.mlflow.parent_run_id", "trainer.wandb.project", "trainer.wandb.group", "trainer.wandb.tags",
            "trainer.wandb.mode"}


def settings_fields_not_sections(cls: type) -> list[str]:
    """Fields of ``cls`` (recursively) that hold a settings dataclass without ``section``, hiding its keys' roles."""
    found = []
    for item, hint in schema_fields(cls):
        inner = section_type(hint)[0]
        if dataclasses.is_dataclass(inner):
            found += settings_fields_not_sections(inner) if item.metadata.get("section") else [f"{cls.__name__}.{item.name}"]
    return found


def test_every_config_key_declares_its_role():
    undeclared = [key for key, role in walk_roles() if role is None]
    assert undeclared == [], f"declare these keys' roles with setting(..., role=...): {undeclared}"
    assert settings_fields_not_sections(ExperimentConfig) == []


@dataclasses.dataclass
class Inner:
    declared: int = setting(1, role=STUDENT)
    forgotten: int = 2


@dataclasses.dataclass
class Outer:
    inner: Inner = section(Inner)
    many: dict[str, Inner] = section(dict)


@dataclasses.dataclass
class Hidden:
    inner: Inner = setting(factory=Inner, role=STUDENT)


def test_a_field_without_a_role_is_found():
    assert [key for key, role in walk_roles(Outer) if role is None] == ["inner.forgotten", "many.*.forgotten"]
    assert settings_fields_not_sections(Hidden) == ["Hidden.inner"]


def test_the_declared_roles_answer_each_question():
    # What a resumed run and a sweep's finished run may differ in (issue 32 added overwrite, out, teachers.root
    # and train_missing to the sweep's list and train_missing to resume's).
    assert set(keys_with(lambda r: not r.result)) == {"trainer.progress", "trainer.resume", "trainer.overwrite", "out",
                                                      "teachers.root", "teachers.train_missing"} | TRACKING
    assert set(keys_with(lambda r: r.tracking)) == TRACKING
    assert keys_with(lambda r: r.extends) == ("trainer.epochs",)
    assert keys_with(lambda r: r.folder) == ("dataset.root",)
    # What a report groups over (issue 32 added the logistics and tracking keys).
    assert set(keys_with(lambda r: not r.report)) == {"seed", "dataset.root", "trainer.device", "trainer.threads"} | \
        set(keys_with(lambda r: not r.result))
    # What a teacher run resets (and the sweep's teacher folder does not hash).
    assert set(keys_with(lambda r: r.result and not r.teacher)) == {
        "dataset.modalities", "model.fusion", "model.fusion_settings", "method", "smp.enabled", "smp.schedule", "smp.tau", "smp.auto.patience",
        "smp.auto.min_delta", "smp.auto.max_share", "smp.modulator", "smp.partial_alpha", "smp.suppression"}


def test_keys_below_a_declared_key_take_its_role():
    assert role_of("method.g2d.alpha") == role_of("method") == STUDENT
    assert role_of("model.encoders.audio.width") == role_of("model.encoder.width")
    assert role_of("dataset.options.rows").result and role_of("dataset.options.rows").teacher
    assert role_of("trainer.mlflow").tracking and not role_of("trainer").tracking
    assert role_of("smp") == STUDENT
    assert role_of("a.key.an.older.g2d.had").result  # unknown keys are compared, as before


def test_a_teacher_run_is_the_same_for_students_that_differ_only_in_student_keys():
    first = load_config(None, ["method.name=g2d", "smp.tau=[3]", "model.fusion=concat", "dataset.modalities=[fou,kar]"])
    second = load_config(None, ["method.name=umt", "smp.partial_alpha=0.5", "smp.auto.patience=3",
                                "dataset.modalities=[fou,pix]"])
    assert to_dict(teacher_run_config(first, "fou")) == to_dict(teacher_run_config(second, "fou"))
    assert teacher_key(first) == teacher_key(second)
    assert teacher_run_config(first, "fou").smp.enabled is False
    assert teacher_run_config(first, "fou").method == {"name": "joint"}
    assert teacher_key(load_config(None, ["trainer.overwrite=true", "trainer.loggers=[csv]"])) == \
        teacher_key(load_config(None, []))
    assert teacher_key(load_config(None, ["optim.lr=0.5"])) != teacher_key(load_config(None, []))


def test_resume_compares_result_keys_only(tmp_path):
    saved = to_dict(load_config(None, ["trainer.epochs=5", "out=a", "dataset.root=data"]))
    where = tmp_path / "run" / "checkpoints" / "state.pt"
    for same in (["trainer.epochs=9", "out=b", "teachers.train_missing=false", "trainer.loggers=[csv]",
                  f"dataset.root={Path('data').resolve()}"], ["trainer.epochs=5", "dataset.root=./data"]):
        check_resume(saved, load_config(None, same), where)
    for differs, key in ((["trainer.epochs=5", "dataset.root=data", "trainer.threads=1"], "trainer.threads"),
                         (["trainer.epochs=5", "dataset.root=other"], "dataset.root"),
                         (["trainer.epochs=4", "dataset.root=data"], "trainer.epochs")):
        with pytest.raises(G2DError, match=f"^config key {key}: "):
            check_resume(saved, load_config(None, differs), where)


def test_a_report_groups_runs_that_differ_only_in_keys_it_does_not_compare():
    def record(seed: int, **config: object) -> RunRecord:
        flat = {"method.name": "joint", "seed": seed, "optim.lr": 0.1, "trainer.overwrite": False,
                "trainer.mlflow.parent_run_id": None, "trainer.device": "cpu", **config}
        metrics = {"method": "joint", "smp": {"enabled": False}}
        return RunRecord(Path(f"runs/{seed}"), metrics, flat, [], None, [], {})

    groups = group_runs([record(0), record(1, **{"trainer.overwrite": True, "trainer.mlflow.parent_run_id": "x",
                                                 "trainer.device": "cuda"}), record(2, **{"optim.lr": 0.2})])
    assert [[r.run_dir.name for r in runs] for runs in groups.values()] == [["0", "1"], ["2"]]


def test_preflight_is_the_one_check_run_relies_on(tmp_path, monkeypatch):
    from conftest import TINY

    from g2d.runs import check, experiment

    config = load_config(None, [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=1",
                                f"out={tmp_path / 'run'}", "trainer.loggers=[]"])
    checked = check.preflight(config)
    assert (checked.method.name, checked.smp, checked.config == config) == ("joint", False, True)
    calls = []
    original = check.preflight
    monkeypatch.setattr(check, "preflight", lambda *args: calls.append(args[1:]) or original(*args))
    experiment.run(checked)
    assert calls == []  # the Checked is relied on
    experiment.run(load_config(None, [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=1",
                                      f"out={tmp_path / 'api'}", "trainer.loggers=[]"]))
    assert calls == [("run",)]  # a plain config is checked once, naming run(config=...) in its errors
