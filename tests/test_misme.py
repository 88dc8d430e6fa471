"""MIS-ME preparation on tiny tables and images in the documented layout, values checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import ROOT
from PIL import Image

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.misme import prepare_misme
from g2d.errors import G2DError

TABLES = {
    "train": "image,vwc,a,b\nimg0.png,0.10,1,10\nimg1.png,0.20,2,\nimg2.png,0.30,3,30\n"
             "missing.png,0.25,4,40\ncorrupt.png,0.15,5,50\nimg3.png,,6,60\n",
    "val": "image,vwc,a,b\nimg4.png,0.40,2,20\n",
    "test": "image,vwc,a,b\nimg5.png,0.05,5,nan\n",
}


def color(index: int) -> tuple[int, int, int]:
    return (index * 40, 7, 255 - index * 40)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("misme") / "MIS-ME"
    (root / "images").mkdir(parents=True)
    for index in range(6):
        Image.new("RGB", (10, 6), color(index)).save(root / "images" / f"img{index}.png")
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for split, text in TABLES.items():
        (root / f"{split}.csv").write_text(text)
    out = root.parent / "prepared"
    return out, prepare_misme(root, out, columns=("a", "b"), size=8, progress=False)


def test_tabular_columns_are_filled_and_standardized_with_training_statistics(prepared: tuple[Path, dict]) -> None:
    # Kept training rows: a = 1, 2, 3; b = 10, (missing -> training mean 20), 30. Both have std sqrt(2/3) * unit.
    out, meta = prepared
    assert meta["splits"] == {"train": 3, "val": 1, "test": 1}
    assert meta["skipped"]["by_reason"] == {"no target": 1, "missing": 1, "unreadable": 1}
    z = 1 / math.sqrt(2 / 3)
    np.testing.assert_allclose(np.load(out / "train" / "tabular.npy"), [[-z, -z], [0, 0], [z, z]], rtol=1e-6)
    np.testing.assert_allclose(np.load(out / "val" / "tabular.npy"), [[0, 0]], atol=1e-7)
    np.testing.assert_allclose(np.load(out / "test" / "tabular.npy"), [[3 * z, 0]], rtol=1e-6)
    assert meta["tabular"]["filled_cells"] == {"train": 1, "val": 0, "test": 1}


def test_images_and_targets(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    images = np.load(out / "train" / "image.npy")
    assert images.shape == (3, 3, 8, 8) and images.dtype == np.uint8
    for row in range(3):
        assert (images[row].reshape(3, -1).T == color(row)).all()
    assert meta["target"]["offset"] == pytest.approx(0.10) and meta["target"]["span"] == pytest.approx(0.20)
    data = load_dataset(load_config(None, ["dataset.name=misme", f"dataset.root={out}"]).dataset)
    assert data.task == "regression" and data.modalities["tabular"].shape == (2,)
    np.testing.assert_allclose(data.splits["train"]["label"].numpy(), [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(data.splits["val"]["label"].numpy(), [1.5], atol=1e-6)
    np.testing.assert_allclose(data.unscale_targets(data.splits["test"]["label"]).numpy(), [0.05], atol=1e-6)


def test_g2d_train_runs_regression_on_the_prepared_folder(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = prepared
    overrides = [
        f"dataset.root={out}", "trainer.epochs=2", "smp.tau=[1]", "trainer.batch_size=2", "trainer.progress=false",
        "model.encoders.image={name: resnet18, width: 4}", f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 't'}",
    ]
    assert main(["train", str(ROOT / "configs" / "paper" / "misme" / "g2d.yaml"), *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and "mape" in metrics["test"]["multimodal"]


def test_layout_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(G2DError, match="train.csv: MIS-ME train table not found"):
        prepare_misme(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "train.xlsx").write_bytes(b"PK")
    with pytest.raises(G2DError, match="Excel tables are not read"):
        prepare_misme(tmp_path, tmp_path / "out", progress=False)
    for split, text in TABLES.items():
        (tmp_path / f"{split}.csv").write_text(text)
    with pytest.raises(G2DError, match="missing column.*air_temperature"):
        prepare_misme(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "val.csv").write_text("image,vwc,a,b\nimg4.png,0.4,2,wet\n")
    with pytest.raises(G2DError, match=r"val.csv:2: column 'b' holds 'wet'"):
        prepare_misme(tmp_path, tmp_path / "out", columns=("a", "b"), progress=False)
    assert main(["prepare", "misme", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--columns", "a,b"]) == 2
    assert not (tmp_path / "out").exists()
