"""Encoders that start from a weights file: loaded bit for bit, frozen, own learning rate, readable errors."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_interrupted
from safetensors.torch import load_file, save_file

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.errors import G2DError
from g2d.models.multimodal import MultimodalModel
from g2d.runs.experiment import run
from g2d.training.engine import build_optimizer

CONFIG = str(ROOT / "configs" / "mfeat.yaml")
METHODS = ("joint", "g2d", "umt", "ume", "ogm_ge", "agm", "pmr", "mla", "mmpareto", "reconboost", "dlmg", "mses", "mslr")


def pix_state(seed: int = 7, hidden: int = 16) -> dict[str, torch.Tensor]:
    """An MLP encoder state for mfeat's 240-d pix view, with values no initialisation would give."""
    generator = torch.Generator().manual_seed(seed)
    return {"net.0.weight": torch.randn(hidden, 240, generator=generator),
            "net.0.bias": torch.randn(hidden, generator=generator)}


def build(overrides: list[str]) -> MultimodalModel:
    config = load_config(CONFIG, [*TINY, *overrides])
    data = load_dataset(config.dataset)
    return MultimodalModel(data.modalities, config.model, data.num_classes)


def pix_encoder(weights: Path, *extra: str) -> str:
    options = ", ".join(["hidden: [16]", f"weights: {weights}", *extra])
    return f"model.encoders.pix={{{options}}}"


@pytest.mark.parametrize("suffix, wrapped", [(".safetensors", False), (".pt", False), (".pth", True)])
def test_weights_file_is_loaded_bit_for_bit(tmp_path, suffix, wrapped):
    state = pix_state()
    path = tmp_path / f"pix{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if wrapped else state, path)
    model = build([pix_encoder(path)])
    loaded = model.encoders["pix"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not torch.equal(build([]).encoders["pix"].state_dict()["net.0.weight"], state["net.0.weight"])


def test_prefix_takes_one_encoder_out_of_a_g2d_checkpoint(tmp_path, tiny_overrides):
    run(load_config(CONFIG, [*tiny_overrides, "method.name=joint", "trainer.epochs=1"]))
    checkpoint = tmp_path / "run" / "checkpoints" / "best.safetensors"
    saved = load_file(str(checkpoint))
    model = build([pix_encoder(checkpoint, "weights_prefix: encoders.pix.")])
    for name, value in model.encoders["pix"].state_dict().items():
        assert torch.equal(value, saved[f"encoders.pix.{name}"])


def test_frozen_pretrained_encoder_never_moves_in_teacher_or_student(tmp_path, tiny_overrides):
    path = tmp_path / "pix.safetensors"
    save_file(pix_state(), str(path))
    metrics = run(load_config(CONFIG, [*tiny_overrides, pix_encoder(path, "freeze: true")]))
    assert metrics["method"] == "g2d"
    student = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    teacher = load_file(str(tmp_path / "teachers" / "teacher_pix" / "teacher.safetensors"))
    for name, value in pix_state().items():
        assert torch.equal(student[f"encoders.pix.{name}"], value)
        assert torch.equal(teacher[f"encoders.pix.{name}"], value)
    start = build([pix_encoder(path)]).state_dict()
    assert not torch.equal(student["encoders.mor.net.0.weight"], start["encoders.mor.net.0.weight"])
    meta = json.loads((tmp_path / "teachers" / "teacher_pix" / "teacher.json").read_text())
    assert meta["encoder"]["weights"] == str(path) and meta["encoder"]["freeze"] is True
    assert set(meta["pretrained"]) == {"weights"}


def test_frozen_encoder_stays_in_eval_mode():
    model = build(["model.encoders.pix={hidden: [16], dropout: 0.5, freeze: true}"])
    model.train()
    assert not model.encoders["pix"].training and model.encoders["mor"].training and model.fusion.training
    assert not any(p.requires_grad for p in model.encoders["pix"].parameters())


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A folder with the pix weights file, whose teachers the methods below share."""
    folder = tmp_path_factory.mktemp("frozen")
    save_file(pix_state(), str(folder / "pix.safetensors"))
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_with_a_frozen_encoder(shared, method):
    overrides = [*TINY, "trainer.epochs=1", f"method.name={method}", pix_encoder(shared / "pix.safetensors", "freeze: true"),
                 f"out={shared / method}", f"teachers.root={shared / 'teachers'}"]
    run(load_config(CONFIG, overrides))
    student = load_file(str(shared / method / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(student[f"encoders.pix.{k}"], v) for k, v in pix_state().items())


def test_lr_scale_gives_the_encoder_its_own_learning_rate(tmp_path):
    config = load_config(CONFIG, [*TINY, "optim.lr=0.2", "model.encoders.mor={hidden: [16], lr_scale: 0.25}"])
    data = load_dataset(config.dataset)
    model = MultimodalModel(data.modalities, config.model, data.num_classes)
    rates = {g["name"]: g["lr"] for g in build_optimizer(model, config.optim).param_groups}
    assert rates == {"encoder:pix": 0.2, "encoder:mor": 0.05, "fusion": 0.2}


def test_lr_scale_zero_keeps_the_pretrained_weights(tmp_path, tiny_overrides):
    path = tmp_path / "pix.safetensors"
    save_file(pix_state(), str(path))
    run(load_config(CONFIG, [*tiny_overrides, "method.name=joint", pix_encoder(path, "lr_scale: 0.0")]))
    student = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(student[f"encoders.pix.{k}"], v) for k, v in pix_state().items())


def test_teacher_from_a_changed_weights_file_is_refused(tmp_path, tiny_overrides, capsys):
    path = tmp_path / "pix.safetensors"
    save_file(pix_state(), str(path))
    assert main(["train", CONFIG, *tiny_overrides, "method.name=umt", pix_encoder(path)]) == 0
    save_file(pix_state(seed=8), str(path))
    capsys.readouterr()
    assert main(["train", CONFIG, *tiny_overrides, "method.name=umt", pix_encoder(path), "trainer.overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert "pretrained" in err and "teacher_pix" in err


def mismatched(state: dict) -> dict:
    return {"net.0.weight": torch.zeros(8, 240), "extra.bias": torch.zeros(3)}


def as_integers(state: dict) -> dict:
    return {name: (value * 100).to(torch.int32) for name, value in state.items()}


@pytest.mark.parametrize(
    "contents, fragments",
    [
        (mismatched, ["missing keys: net.0.bias", "unexpected keys: extra.bias",
                      "shapes differ (file vs encoder): net.0.weight (8, 240) vs (16, 240)"]),
        (as_integers, ["integer values for floating-point parameters", "net.0.weight torch.int32 vs torch.float32"]),
        ("nonsense", ["not a readable safetensors file"]),
        (None, ["weights file not found"]),
    ],
)
def test_weights_that_do_not_fit_are_one_line_and_write_nothing(tmp_path, tiny_overrides, capsys, contents, fragments):
    path = tmp_path / "pix.safetensors"
    if callable(contents):
        save_file(contents(pix_state()), str(path))
    elif contents is not None:
        path.write_text(contents)
    assert main(["train", CONFIG, *tiny_overrides, pix_encoder(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("g2d: error:") and "\n" not in err and str(path) in err
    assert all(fragment in err for fragment in fragments), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "teachers").exists()


class NotATensor:
    """A pickled object: a torch file holding one must be refused, never unpickled."""


def test_torch_file_with_objects_is_refused(tmp_path):
    path = tmp_path / "pix.pt"
    torch.save({"net.0.weight": NotATensor()}, path)
    with pytest.raises(G2DError, match="weights_only"):
        build([pix_encoder(path)])


@pytest.mark.parametrize(
    "encoder, fragment",
    [
        ("{hidden: [16], lr_scale: -1.0}", "model.encoders.pix.lr_scale"),
        ("{hidden: [16], path: /tmp}", "model.encoders.pix.path"),
        ("{hidden: [16], weights_prefix: encoders.pix.}", "model.encoders.pix.weights_prefix"),
    ],
)
def test_bad_pretrained_settings_name_the_key(encoder, fragment):
    with pytest.raises(G2DError, match=fragment.replace(".", r"\.")):
        build([f"model.encoders.pix={encoder}"])


def test_prefix_matching_nothing_lists_what_the_file_holds(tmp_path):
    path = tmp_path / "pix.safetensors"
    save_file(pix_state(), str(path))
    with pytest.raises(G2DError, match="no tensor name starts with 'encoders.pix.'.*net.0.bias"):
        build([pix_encoder(path, "weights_prefix: encoders.pix.")])


def test_resumed_run_with_frozen_and_rescaled_encoders_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    path = tmp_path / "pix.safetensors"
    save_file(pix_state(), str(path))

    def config(name: str, *extra: str):
        return load_config(CONFIG, [*TINY, "method.name=g2d", "smp.schedule=dynamic", "smp.tau=[1]",
                                    pix_encoder(path, "freeze: true"), "model.encoders.mor={hidden: [16], lr_scale: 0.3}",
                                    f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra])

    run(config("whole"))
    run_interrupted(monkeypatch, config("split"))
    run(config("split", "trainer.resume=true"))
    for name in ("last.safetensors", "best.safetensors"):
        assert (tmp_path / "whole" / "checkpoints" / name).read_bytes() == (tmp_path / "split" / "checkpoints" / name).read_bytes()
    state = torch.load(tmp_path / "split" / "checkpoints" / "last_state.pt", weights_only=True)
    assert [(g["name"], g["lr"]) for g in state["optimizer"]["param_groups"]] == [("encoder:mor", 0.05 * 0.3), ("fusion", 0.05)]
