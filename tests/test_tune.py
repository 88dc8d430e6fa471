"""``g2d tune``: the SPEC grammar, refusals that write nothing, trials as run folders, pruning, several
processes on one study, kill -9 and a rerun, and a study in a real PostgreSQL server."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from g2d.cli import main
from g2d.config import load_config
from g2d.errors import G2DError

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

import g2d.runs.tune as tune  # noqa: E402
from g2d.runs.tune import TuneOptions, parse_dimension  # noqa: E402

CONFIG = ROOT / "configs" / "mfeat.yaml"
# No teachers (joint trains without them), so a trial is a few seconds and every checkpoint is the trial's.
QUICK = [*TINY, "method.name=joint", "trainer.epochs=2"]
LR = "optim.lr=0.01:0.1:log"


def cli(tmp_path, *extra, out="tune"):
    return ["tune", str(CONFIG), *QUICK, "--space", LR, *extra, "--out", str(tmp_path / out)]


def study(out: Path, name: str | None = None, storage: str | None = None):
    return optuna.load_study(study_name=name or out.name, storage=storage or f"sqlite:///{out / 'study.db'}")


def test_spec_grammar_gives_floats_log_ranges_integers_lists_and_choices():
    base = load_config(CONFIG, TINY)
    lr = parse_dimension("optim.lr=1e-3:1e-1:log", base).params[0]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-3, 1e-1, True)
    alpha = parse_dimension("method.g2d.alpha=0.1:10", base).params[0]
    assert (alpha.kind, alpha.log) == ("float", False)
    assert parse_dimension("optim.lr=1:2", base).params[0].kind == "float"  # optim.lr is a float key
    assert parse_dimension("trainer.epochs=2:8", base).params[0].kind == "int"
    tau = parse_dimension("smp.tau=[1:4,2:6]", base)
    assert [(p.name, p.kind, p.low, p.high) for p in tau.params] == [("smp.tau.0", "int", 1, 4), ("smp.tau.1", "int", 2, 6)]
    assert tau.value({"smp.tau.0": 3, "smp.tau.1": 5}) == "[3,5]"
    assert load_config(CONFIG, [f"smp.tau={tau.value({'smp.tau.0': 3, 'smp.tau.1': 5})}"]).smp.tau == [3, 5]
    schedule = parse_dimension("smp.schedule=ranked,dynamic", base).params[0]
    assert (schedule.kind, schedule.choices) == ("choice", ["ranked", "dynamic"])


@pytest.mark.parametrize("space, fragment", [
    ("optim.lrr=0.01:0.1", "--space optim.lrr=0.01:0.1: at 0.01: "),
    ("method.joint.alphaa=0.1:1", "method.joint.alphaa"),
    ("method.g2d.alpha=0.1:1", "--space method.g2d.alpha: the method is joint"),
    ("optim.lr=0.1:0.1", "--space optim.lr: the range 0.1:0.1 is empty"),
    ("optim.lr=0.1:0.01", "--space optim.lr: the range 0.1:0.01 is reversed"),
    ("optim.lr=0:0.1:log", "--space optim.lr: a log range must be above 0"),
    ("optim.lr=a:b", "--space optim.lr: 'a' in 'a:b' is not a number"),
    ("smp.schedule=ranked", "--space smp.schedule: 'ranked' needs two choices or more"),
    ("smp.schedule=ranked,sideways", "--space smp.schedule=ranked,sideways: at sideways"),
    ("seed=0:3", "--space seed: set by the tune itself"),
])
def test_a_bad_space_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, space, fragment):
    out = tmp_path / "tune"
    assert main(["tune", str(CONFIG), *QUICK, "--space", space, "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_storage_that_cannot_be_opened_is_refused_and_nothing_written(tmp_path, capsys):
    bad = f"sqlite:///{tmp_path / 'missing' / 'folder' / 'study.db'}"
    for storage in (bad, "nosuchdb://host/x"):
        assert main([*cli(tmp_path, "--trials", "2"), "--storage", storage]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("g2d: error: --storage ") and "cannot be opened" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_is_refused_with_the_install_command(tmp_path, capsys, monkeypatch):
    real = tune.importlib.util.find_spec
    monkeypatch.setattr(tune.importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    assert main(cli(tmp_path, "--trials", "1")) == 2
    assert "pip install 'g2d[tune]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_trials_are_run_folders_the_value_is_validation_and_outputs_are_written(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(cli(tmp_path, "--trials", "3", "--prune", "none")) == 0
    printed = capsys.readouterr().out
    trials = study(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        run = out / "trials" / f"{trial.number:04d}" / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert json.loads((run / ".g2d.json").read_text())["kind"] == "run"
        # The value is the kept epoch's validation accuracy, never the test score.
        assert trial.value == metrics["val"]["multimodal"]["accuracy"]
        assert load_config(run / "config.yaml").optim.lr == pytest.approx(trial.params["optim.lr"])
        record = json.loads((run.parent / "trial.json").read_text())
        assert record["state"] == "complete" and record["value"] == trial.value
    assert json.loads((out / ".g2d.json").read_text())["kind"] == "tune"
    best = max(trials, key=lambda t: t.value)
    text = (out / "tune.md").read_text()
    assert f"## Best trial: {best.number} (validation {best.value:.4f})" in text and text in printed
    assert "g2d sweep " in text and "## Parameter importances" in text
    config = load_config(out / "best.yaml")
    assert config.optim.lr == pytest.approx(best.params["optim.lr"]) and config.trainer.epochs == 2
    assert config.method_name == "joint" and config.out == str(out / "best")
    # g2d train runs it as is, and retrains the best trial: same seed, same validation score.
    assert main(["train", str(out / "best.yaml")]) == 0
    assert json.loads((out / "best" / "metrics.json").read_text())["val"]["multimodal"]["accuracy"] == best.value

    # A rerun of a finished study trains nothing; g2d report reads the tune folder's trials.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/seed0/metrics.json")}
    assert main(cli(tmp_path, "--trials", "3")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/seed0/metrics.json")} == stamps
    assert len(study(out).trials) == 3
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_a_study_of_another_config_is_refused_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(cli(tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["tune", str(CONFIG), *QUICK, "trainer.batch_size=32", "--space", LR, "--trials", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"g2d: error: --study tune: belongs to another config (key trainer.batch_size is 64 there, 32 "
                   "here); choose another --study or the same settings")
    assert main(["tune", str(CONFIG), *QUICK, "--space", "optim.lr=0.01:0.2", "--trials", "2", "--out", str(out)]) == 2
    assert "--study tune: belongs to another space" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert len(study(out).trials) == 1


class OddPruner(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report: which trials are pruned is known in advance."""

    def prune(self, study, trial):
        return trial.number % 2 == 1


def test_a_pruned_trial_stops_after_its_checkpoint_and_its_folder_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune, "make_pruner", lambda name, steps: OddPruner())
    out = tmp_path / "tune"
    assert main(cli(tmp_path, "--trials", "3")) == 0
    assert [t.state for t in study(out).trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = out / "trials" / "0001"
    record = json.loads((pruned / "trial.json").read_text())
    assert record["state"] == "pruned" and record["epoch"] == 0 and record["pruned_after_step"] == 0
    assert not (pruned / "seed0" / "metrics.json").exists()  # stopped after epoch 0's checkpoint, of 2
    assert any((pruned / "seed0").glob("*checkpoints*"))
    assert "| 1 | pruned after epoch 1 |" in (out / "tune.md").read_text()
    assert "1 pruned" in capsys.readouterr().out


def process(tmp_path, *extra, env=None):
    command = [sys.executable, "-m", "g2d", *cli(tmp_path, *extra)]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def counted(trials):
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow
def test_two_processes_on_one_study_split_the_trials_and_stop_at_n(tmp_path):
    out = tmp_path / "tune"
    out.mkdir()
    main(cli(tmp_path, "--trials", "1"))  # creates the study and the folder, so both processes join it
    first, second = (process(tmp_path, "--trials", "5", "--prune", "none") for _ in range(2))
    logs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], logs
    trials = study(out).trials
    assert len(counted(trials)) == 5
    assert all(t.state == TrialState.COMPLETE or "g2d.surplus" in t.user_attrs for t in trials)
    ran = [log.count(": validation ") for log in logs]
    assert sum(ran) == 4 and min(ran) >= 1, logs  # both worked; the first trial was there before
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in range(len(trials))
                                                                   if trials[n].state == TrialState.COMPLETE]


@pytest.mark.slow
def test_kill_9_then_a_rerun_retries_the_trial_in_its_folder_and_counts_it_once(tmp_path):
    out = tmp_path / "tune"
    # Killed just after the 3rd checkpoint: trial 0 finished (2 epochs), trial 1 after its first epoch.
    killed = process(tmp_path, "--trials", "3", "--heartbeat", "1",
                     env={"G2D_TEST_KILL_AT": "checkpoint.after_commit:3"})
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert [t.state for t in study(out).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    # Past the grace period (two beats): a rerun that starts sooner runs a new trial first and retries the
    # dead one after it, which counts the same but numbers the trials otherwise.
    time.sleep(3)
    rerun = process(tmp_path, "--trials", "3", "--heartbeat", "1")
    log = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, log
    trials = study(out).trials
    states = [t.state for t in trials]
    # Trial 1 stopped beating: failed, and retried with its parameters as trial 2, which resumed folder 0001.
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], log
    assert trials[2].system_attrs["failed_trial"] == 1 and trials[2].params == trials[1].params
    history = json.loads((out / "trials" / "0001" / "seed0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0003"]
    assert len(counted(trials)) == 3
    assert "interrupted, retried" in (out / "tune.md").read_text()


POSTGRES_BIN = next((Path(p).resolve().parent for p in [shutil.which("pg_ctl"), *sorted(Path("/usr/lib/postgresql").glob(
    "*/bin/pg_ctl"))] if p), None)


def as_user(user: str | None, command: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root the server runs as ``user`` (runuser)."""
    return ["runuser", "-u", user, "--", *command] if user else command


@pytest.fixture
def postgres(tmp_path):
    """A real PostgreSQL server on a local port for the test, as an unprivileged user when run as root."""
    if POSTGRES_BIN is None:
        pytest.skip("PostgreSQL's server binaries (pg_ctl, initdb) are not installed; apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install 'g2d[tune]')")
    user = None
    if os.geteuid() == 0:
        user = "g2d-pg-test"
        if subprocess.run(["id", user], capture_output=True).returncode:
            subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    data = Path(tempfile.mkdtemp(prefix="g2d-pg-"))  # outside pytest's root-only folders, which the user cannot enter
    if user:
        shutil.chown(data, user)
    subprocess.run(as_user(user, [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "g2d", "--auth=trust"]),
                   check=True, capture_output=True)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(as_user(user, [str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w", "start",
                                  "-l", str(data / "log")]), check=True, capture_output=True)
    try:
        yield f"postgresql://g2d@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user(user, [str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_a_study_in_postgresql_is_shared_by_two_tune_folders(tmp_path, postgres, capsys):
    assert main([*cli(tmp_path, "--trials", "2", "--prune", "none", out="a"), "--storage", postgres,
                 "--study", "shared"]) == 0
    # A second machine (here: another folder) joins the same study and finds it done.
    assert main([*cli(tmp_path, "--trials", "2", out="b"), "--storage", postgres, "--study", "shared"]) == 0
    trials = study(tmp_path / "a", "shared", postgres).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert not (tmp_path / "b" / "trials").exists()
    assert "postgresql://g2d@127.0.0.1" in (tmp_path / "b" / "tune.md").read_text()
    assert main([*cli(tmp_path, "--trials", "2", out="c"), "--storage", postgres.replace("/postgres", "/nosuch")]) == 2
    assert "cannot be opened" in capsys.readouterr().err


@pytest.mark.slow
def test_trials_are_mlflow_children_of_the_study(tmp_path, capsys):
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
    out = tmp_path / "tune"
    assert main(["tune", str(CONFIG), *QUICK, "trainer.loggers=[mlflow]", "--space", LR, "--trials", "2",
                 "--prune", "none", "--out", str(out)]) == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("g2d").experiment_id])}
    parent = runs.pop("tune")
    assert parent.info.status == "FINISHED" and {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "tune.md", "best.yaml"}
    assert sorted(runs) == ["0000/seed0", "0001/seed0"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())


def test_trials_of_one_seed_share_their_teachers_as_in_a_sweep(tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", str(CONFIG), *TINY, "trainer.epochs=1", "smp.tau=[0]", "--space", "method.g2d.alpha=0.1:10:log",
                 "--trials", "2", "--prune", "none", "--out", str(out)]) == 0
    roots = {load_config(p).teachers.root for p in out.glob("trials/*/seed0/config.yaml")}
    assert len(roots) == 1 and [p.name for p in (out / "teachers").iterdir()] == [Path(roots.pop()).name]
    assert sorted(p.name for p in next((out / "teachers").iterdir()).iterdir()) == ["teacher_mor", "teacher_pix"]


def test_an_out_of_another_kind_or_no_trials_is_refused(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / ".g2d.json").write_text('{"kind": "sweep"}')
    assert main(["tune", str(CONFIG), *QUICK, "--space", LR, "--trials", "2", "--out", str(sweep)]) == 2
    assert "holds a sweep, not a tune" in capsys.readouterr().err
    assert main(cli(tmp_path, "--trials", "0")) == 2
    assert "--trials: must be at least 1, got 0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"] and [p.name for p in sweep.iterdir()] == [".g2d.json"]


def test_with_several_seeds_a_trial_is_the_mean_of_its_runs_validation(tmp_path):
    out = tmp_path / "tune"
    # A narrow range, so the trial's sampled lr (the sampler's seed varies by process) gives two seeds whose
    # validation scores differ on every run, and a mean that is neither seed's alone.
    narrow = ["tune", str(CONFIG), *QUICK, "--space", "optim.lr=0.002:0.00201", "--out", str(out)]
    assert main([*narrow, "--trials", "1", "--prune", "none", "--seeds", "0", "1"]) == 0
    trial = study(out).trials[0]
    scores = [json.loads((out / "trials" / "0000" / f"seed{s}" / "metrics.json").read_text())["val"]["multimodal"]["accuracy"]
              for s in (0, 1)]
    assert trial.value == pytest.approx((scores[0] + scores[1]) / 2) and scores[0] != scores[1]
    # Every epoch of both seeds went to the pruner, seed 1's after seed 0's.
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
    assert "--seeds 0 1 --out" in (out / "tune.md").read_text()
