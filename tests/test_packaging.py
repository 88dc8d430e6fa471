"""Configs shipped inside the package, found by name; and the wheel, installed into a fresh venv, carries them."""

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

import g2d
from g2d.cli import main
from g2d.config import PACKAGED_CONFIGS, load_config, packaged_configs, to_dict


def test_every_config_of_the_checkout_is_packaged_and_named():
    in_checkout = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                         for p in (ROOT / "configs").rglob("*.yaml"))
    assert (ROOT / "configs").resolve() == PACKAGED_CONFIGS
    assert packaged_configs() == in_checkout
    assert {"mfeat", "mfeat3", "houses", "paper/cremad/g2d", "paper/misme/joint"} <= set(in_checkout)


def test_a_name_a_yaml_name_and_a_checkout_path_give_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/mfeat.yaml is no file here
    by_path = to_dict(load_config(ROOT / "configs" / "paper" / "cremad" / "g2d.yaml"))
    for name in ("paper/cremad/g2d", "paper/cremad/g2d.yaml", "configs/paper/cremad/g2d.yaml"):
        assert to_dict(load_config(name)) == by_path, name
    assert by_path["dataset"]["name"] == "cremad"


def test_a_file_that_exists_wins_over_the_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("mfeat").seed == 0
    Path("mfeat").write_text("seed: 7\n")
    assert load_config("mfeat").seed == 7


def test_configs_lists_the_packaged_names(capsys):
    assert main(["configs"]) == 0
    assert capsys.readouterr().out.splitlines() == packaged_configs()


def test_config_prints_the_resolved_yaml_with_overrides(capsys):
    assert main(["config", "mfeat", "trainer.epochs=2", "optim.lr=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_config("mfeat", ["trainer.epochs=2", "optim.lr=0.5"]))
    assert printed["trainer"]["epochs"] == 2 and printed["optim"]["lr"] == 0.5
    assert printed["dataset"]["modalities"] == ["pix", "mor"] and printed["trainer"]["batch_size"] == 16


@pytest.mark.parametrize("argv, named", [
    (["config", "no/such/config"], "no/such/config"),
    (["train", "../mfeat"], "../mfeat"),
    (["config", "mfeat", "trainer.epochs=zero"], "trainer.epochs"),
])
def test_an_unknown_config_is_one_line_naming_it(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and named in captured.err
    assert list(tmp_path.iterdir()) == []


def test_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert not any(name.startswith(("av", "playwright", "transformers")) for name in test_extra)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_carries_configs_data_types_and_entry_points(tmp_path):
    """Build the wheel from a copy of the sources, install it alone into a new venv (its dependencies
    come from this interpreter's site-packages through a .pth) and use it from a folder outside the checkout."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)], tmp_path, env)
    [wheel] = (tmp_path / "dist").glob("g2d-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python, script = venv / "bin" / "python", venv / "bin" / "g2d"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        tmp_path, env)
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         tmp_path, env).stdout.strip())
    (venv_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    probe = ("import g2d, importlib.metadata as m, pathlib; p = pathlib.Path(g2d.__file__).parent; "
             "print(p); print(m.version('g2d')); print((p / 'py.typed').is_file()); "
             "print(len(list((p / 'data' / 'mfeat').glob('mfeat-*.csv'))))")
    folder, version, typed, views = run([str(python), "-c", probe], elsewhere, env).stdout.split()
    assert Path(folder).is_relative_to(venv) and version == g2d.__version__ and typed == "True" and views == "6"

    assert run([str(script), "configs"], elsewhere, env).stdout.splitlines() == packaged_configs()
    printed = yaml.safe_load(run([str(script), "config", "mfeat"], elsewhere, env).stdout)
    assert printed == to_dict(load_config("mfeat"))
    assert "configs" in run([str(python), "-m", "g2d", "--help"], elsewhere, env).stdout
    run([str(script), "train", "mfeat", "trainer.epochs=1", "trainer.batch_size=64", "trainer.progress=false",
         "model.encoder.hidden=[16]", "out=run"], elsewhere, env)
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["method"], metrics["epochs"]) == ("mfeat", "g2d", 1)
    assert set(metrics["teachers"]) == {"pix", "mor"}
