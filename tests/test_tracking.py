"""Experiment tracking (``trainer.loggers``) against the real MLflow and W&B libraries, read back with their own
client (MLflow) or by decoding the offline run file (W&B); a failing backend never touches training."""

import json
import logging
import os
import struct

import pytest
import torch
from conftest import ROOT, TINY

import g2d.training.tracking as tracking
from g2d.cli import main
from g2d.config import flatten, load_config, to_dict
from g2d.runs.experiment import run
from g2d.runs.sweep import grid_points, run_sweep

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

CONFIG = ROOT / "configs" / "mfeat.yaml"


def tracked(tmp_path, loggers, *extra):
    return load_config(CONFIG, [*TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
                                f"trainer.loggers=[{','.join(loggers)}]",
                                f"trainer.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])


def mlflow_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("g2d").experiment_id
    return client, {r.info.run_name: r for r in client.search_runs([experiment])}


def steps(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_unknown_or_missing_logger_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", str(CONFIG), *TINY, f"out={out}", "trainer.loggers=[tensorboard,neptune]"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "g2d: error: config key trainer.loggers: unknown logger 'neptune' (available: tensorboard, csv, mlflow, wandb)"]
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    assert main(["train", str(CONFIG), *TINY, f"out={out}", "trainer.loggers=[mlflow]"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trainer.loggers: mlflow" in error[0] and "pip install 'g2d[mlflow]'" in error[0]
    assert not out.exists()


def test_mlflow_run_in_sqlite_holds_params_histories_final_metrics_and_linked_teachers(tmp_path):
    config = tracked(tmp_path, ["mlflow"], "smp.tau=[1]")
    metrics = run(config)
    client, runs = mlflow_runs(tmp_path)
    assert sorted(runs) == ["run", "teacher_mor", "teacher_pix"]
    student = runs["run"]
    assert student.info.status == "FINISHED"
    assert student.data.params == {k: str(v) for k, v in flatten(to_dict(config)).items()}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for key, value in (("val/multimodal/accuracy", lambda r: r["val"]["multimodal"]["accuracy"]),
                       ("val/pix/confidence", lambda r: r["val"]["per_modality"]["pix"]["confidence"]),
                       ("train/loss", lambda r: r["train"]["loss"]), ("train/kappa/mor", lambda r: r["train"]["kappa/mor"])):
        assert steps(client, student.info.run_id, key) == [(r["epoch"], pytest.approx(value(r))) for r in history]
    # tau [1]: epoch 0 is phase 0 (one modality alone), epochs 1-2 phase 1 (joint).
    assert [v for _, v in steps(client, student.info.run_id, "smp/phase")] == [0, 1, 1]
    final = student.data.metrics
    assert final["test/multimodal/accuracy"] == pytest.approx(metrics["test"]["multimodal"]["accuracy"])
    assert final["test/per_modality/mor/loss"] == pytest.approx(metrics["test"]["per_modality"]["mor"]["loss"])
    assert final["best_epoch"] == metrics["best_epoch"] and final["wall_seconds"] == metrics["wall_seconds"]
    assert final["teachers/pix/accuracy"] == pytest.approx(metrics["teachers"]["pix"]["accuracy"])
    assert [a.path for a in client.list_artifacts(student.info.run_id)] == ["metrics.json"]
    tags = student.data.tags
    assert tags["g2d.run_dir"] == str((tmp_path / "run").resolve()) and tags["g2d.role"] == "student"
    for modality in ("pix", "mor"):
        teacher = runs[f"teacher_{modality}"]
        assert tags[f"g2d.teacher.{modality}.run_id"] == teacher.info.run_id
        assert teacher.data.tags["g2d.teacher_of"] == modality and teacher.data.params["method.name"] == "joint"


def test_a_run_killed_before_it_logged_its_epoch_resumes_the_same_mlflow_run_with_one_history(tmp_path, monkeypatch):
    config = tracked(tmp_path, ["mlflow", "csv"], "method.name=joint")
    original = tracking.Tracking.epoch

    def killed_at_epoch_1(self, record, modulator=None):
        if record["epoch"] == 1:  # epoch 1 is checkpointed, not yet logged
            raise KeyboardInterrupt
        original(self, record, modulator)

    monkeypatch.setattr(tracking.Tracking, "epoch", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    client, runs = mlflow_runs(tmp_path)
    assert runs["run"].info.status == "FAILED" and [s for s, _ in steps(client, runs["run"].info.run_id, "lr")] == [0]
    monkeypatch.setattr(tracking.Tracking, "epoch", original)
    run(load_config(CONFIG, [*config_overrides(tmp_path, ["mlflow", "csv"]), "method.name=joint",
                             "trainer.resume=true"]))
    client, runs = mlflow_runs(tmp_path)
    assert list(runs) == ["run"] and runs["run"].info.status == "FINISHED"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert steps(client, runs["run"].info.run_id, "val/multimodal/loss") == [
        (r["epoch"], pytest.approx(r["val"]["multimodal"]["loss"])) for r in history]
    rows = (tmp_path / "run" / "tracking.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows if ",lr," in row] == ["0", "1", "2"]


def config_overrides(tmp_path, loggers):
    return [*TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
            f"trainer.loggers=[{','.join(loggers)}]", f"trainer.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def test_a_sweep_is_one_mlflow_parent_run_with_a_child_per_configuration_and_seed(tmp_path):
    overrides = [*TINY, "trainer.epochs=1", "trainer.loggers=[mlflow]"]
    run_sweep(CONFIG, overrides, grid_points(["method.name=joint,g2d"]), [0, 1], tmp_path, log=lambda _: None)
    client, runs = mlflow_runs(tmp_path)
    parent = runs[tmp_path.name]
    assert parent.data.tags["g2d.role"] == "sweep" and parent.info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["sweep.csv", "sweep.json", "sweep.md"]
    children = {name for name, r in runs.items() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    students = {f"seed{s}": f"method.name={m}/seed{s}" for m in ("joint", "g2d") for s in (0, 1)}
    assert set(students.values()) <= children
    assert {n for n in children if n.endswith("teacher_pix")} and len(runs) == 1 + 4 + 4  # parent, students, teachers
    assert not (tmp_path / "method.name=g2d" / "mlflow.db").exists()


def wandb_records(path):
    """The records of an offline W&B run file (LevelDB log format: 32 KiB blocks of checksummed chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    offset, pending = 7, b""
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:
            offset += 32768 - offset % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if kind == 0:
            break
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_files_hold_the_config_and_every_epoch(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = tracked(tmp_path, ["wandb"], "method.name=joint", "trainer.wandb.tags=[tiny]", "trainer.wandb.group=g")
    metrics = run(config)
    ids = json.loads((tmp_path / "run" / "tracking.json").read_text())["wandb"]
    [folder] = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{ids['id']}")
    records = list(wandb_records(folder / f"run-{ids['id']}.wandb"))
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["val/multimodal/accuracy"] for h in history[:3]] == pytest.approx(
        [r["val"]["multimodal"]["accuracy"] for r in saved])
    assert history[3]["test/multimodal/accuracy"] == pytest.approx(metrics["test"]["multimodal"]["accuracy"])
    assert [h["_step"] for h in history] == [0, 1, 2, 3]
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run_record.project, run_record.run_group, list(run_record.tags)) == ("g2d", "g", ["tiny"])
    config_items = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config_items["optim.lr"] == 0.05 and config_items["trainer.loggers"] == ["wandb"]
    assert (folder / "files" / "metrics.json").is_file()


def test_a_failing_backend_warns_once_and_leaves_training_and_the_run_folder_as_without_it(tmp_path, monkeypatch, caplog):
    plain = run(load_config(CONFIG, [*TINY, "method.name=joint", f"out={tmp_path / 'plain'}", "trainer.loggers=[]"]))
    calls = []

    def disk_full(self, metrics, step):
        calls.append(step)
        if step == 1:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.MLflowBackend, "log_metrics", disk_full)
    with caplog.at_level(logging.WARNING, logger="g2d"):
        failed = run(tracked(tmp_path, ["mlflow"], "method.name=joint"))
    warnings = [r.getMessage() for r in caplog.records if "tracking" in r.getMessage()]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "No space left on device" in warnings[0]
    assert calls == [0, 1]  # dropped after the failure, never called again
    assert failed["test"] == plain["test"] and failed["best_epoch"] == plain["best_epoch"]
    weights = [load_weights_of(tmp_path / name) for name in ("plain", "run")]
    assert all((a == b).all() for a, b in zip(weights[0].values(), weights[1].values()))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [*(p.name for p in (tmp_path / "plain").iterdir()), "tracking.json"])


def load_weights_of(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "checkpoints" / "best.safetensors"))


def test_analyze_and_report_files_become_artifacts_of_the_tracked_run(tmp_path):
    run(tracked(tmp_path, ["mlflow"], "method.name=joint", "trainer.epochs=1"))
    assert main(["analyze", str(tmp_path / "run")]) == 0
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    client, runs = mlflow_runs(tmp_path)
    run_id = runs["run"].info.run_id
    assert [a.path for a in client.list_artifacts(run_id, "analysis")] == ["analysis/analysis.json",
                                                                           "analysis/embedding.csv"]
    assert "report/report.html" in [a.path for a in client.list_artifacts(run_id, "report")]
    assert list(runs) == ["run"] and runs["run"].info.status == "FINISHED"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def hang_guard():
    """Fail (not hang) a test still running after 60 s: a guard against a regression, not a timing assert."""
    import signal

    def give_up(signum, frame):
        raise TimeoutError("still running after 60 s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


JOINT = [*TINY, "method.name=joint", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def untracked(tmp_path_factory):
    """A joint run without loggers: its folder and metrics."""
    folder = tmp_path_factory.mktemp("untracked") / "run"
    return folder, run(load_config(CONFIG, [*JOINT, f"out={folder}", "trainer.loggers=[]"]))


@pytest.mark.parametrize("store", ["sqlite-folder", "closed-http-port", "wandb-online-closed-port"])
def test_an_unreachable_store_is_one_warning_no_retries_and_training_as_without_it(store, untracked, tmp_path,
                                                                                    monkeypatch, capfd, hang_guard):
    plain_dir, plain = untracked
    (tmp_path / "a_folder").mkdir()  # SQLite cannot open a folder as its database file
    for name in tracking.MLFLOW_HTTP:
        monkeypatch.delenv(name, raising=False)
    logger = ["trainer.loggers=[mlflow]", f"trainer.mlflow.tracking_uri=sqlite:///{tmp_path / 'a_folder'}"]
    if store == "closed-http-port":
        logger[1] = f"trainer.mlflow.tracking_uri=http://127.0.0.1:{closed_port()}"
    elif store == "wandb-online-closed-port":
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
        logger = ["trainer.loggers=[wandb]", "trainer.wandb.mode=online"]
    capfd.readouterr()
    assert main(["train", str(CONFIG), *JOINT, f"out={tmp_path / 'run'}", *logger]) == 0
    out, err = capfd.readouterr()
    warnings = [line for line in err.splitlines() if "tracking" in line]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0], err
    assert "retried" not in out + err and "Retrying" not in out + err
    assert not any(name in os.environ for name in tracking.MLFLOW_HTTP)  # g2d's settings did not leak
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == plain["test"]
    weights = [load_weights_of(folder) for folder in (plain_dir, tmp_path / "run")]
    assert all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values()))
