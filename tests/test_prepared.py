"""The prepared-folder format, AV-MNIST's MultiBench split, and the small helpers the preparations share."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.audio import repeat_to_length
from g2d.data.avmnist import prepare_avmnist
from g2d.data.media import kept_positions
from g2d.data.prepared import PreparedWriter, SkipLog, load_prepared, map_items
from g2d.errors import G2DError


def write_avmnist(root: Path, train: int, test: int) -> None:
    """An AV-MNIST-layout folder whose row i has all pixels equal to i % 256 and label i % 10."""
    for split, count in (("train", train), ("test", test)):
        rows = np.arange(count)
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(exist_ok=True)
        np.save(root / "image" / f"{split}_data.npy", np.repeat((rows % 256).astype(np.uint8)[:, None], 784, axis=1))
        np.save(root / "audio" / f"{split}_data.npy", np.broadcast_to((rows % 256).astype(np.uint8)[:, None, None], (count, 112, 112)))
        np.save(root / f"{split}_labels.npy", rows % 10)


def test_avmnist_prepare_holds_out_the_last_training_rows(tmp_path: Path) -> None:
    write_avmnist(tmp_path / "raw", train=30, test=7)
    assert main(["prepare", "avmnist", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--val-rows", "5"]) == 0
    data = load_dataset(load_config(None, ["dataset.name=avmnist", f"dataset.root={tmp_path / 'out'}"]).dataset)
    assert [data.size(s) for s in ("train", "val", "test")] == [25, 5, 7]
    assert data.splits["val"]["image"][:, 0, 0, 0].tolist() == [25, 26, 27, 28, 29]
    assert data.splits["train"]["audio"].shape[1:] == (1, 112, 112)
    with pytest.raises(G2DError, match="--val-rows"):
        prepare_avmnist(tmp_path / "raw", tmp_path / "bad", val_rows=30, progress=False)


def test_avmnist_raw_layout_takes_val_rows_as_a_dataset_option(tmp_path: Path) -> None:
    write_avmnist(tmp_path, train=30, test=7)
    base = ["dataset.name=avmnist", f"dataset.root={tmp_path}"]
    data = load_dataset(load_config(None, [*base, "dataset.options.val_rows=4"]).dataset)
    assert data.splits["val"]["label"].tolist() == [6, 7, 8, 9]
    assert data.size("train") == 26
    with pytest.raises(G2DError, match="dataset.options.val_rows"):
        load_dataset(load_config(None, [*base, "dataset.options.val_rows=40"]).dataset)
    with pytest.raises(G2DError, match="dataset.options.val_row"):
        load_dataset(load_config(None, [*base, "dataset.options.val_row=4"]).dataset)


def test_a_failed_preparation_leaves_no_output_and_no_staging_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with PreparedWriter(out, overwrite=False) as writer:
            writer.save("train", "x", np.zeros(3))
            raise RuntimeError("decoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_trim_keeps_the_first_rows_and_loader_checks_shapes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = {"kind": "vector", "shape": [2], "scale": 1.0, "dtype": "float32"}
    with PreparedWriter(out, overwrite=False) as writer:
        for split in ("train", "val", "test"):
            rows = writer.open(split, "x", (5, 2), np.float32)
            rows[:] = np.arange(10, dtype=np.float32).reshape(5, 2)
            rows.flush()
            del rows
            writer.trim(split, "x", 3)
            writer.save(split, "label", np.array([0, 1, 0]))
        writer.finish({"dataset": "toy", "task": "classification", "class_names": ["a", "b"],
                       "modalities": {"x": spec}, "splits": {"train": 3, "val": 3, "test": 3}}, SkipLog())
    data = load_prepared(out, "toy")
    assert data.splits["val"]["x"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert (out / "skipped.csv").read_text().splitlines() == ["split,item,reason"]
    np.save(out / "test" / "x.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(G2DError, match=r"test/x.npy: expected float32 \(3, 2\)"):
        load_prepared(out, "toy")
    np.save(out / "test" / "x.npy", np.array([None, 1, 2], dtype=object), allow_pickle=True)
    with pytest.raises(G2DError, match="test/x.npy: cannot read"):
        load_prepared(out, "toy")


def test_kept_positions_spread_frames_evenly() -> None:
    assert kept_positions(3, 1) == [1]
    assert kept_positions(2, 1) == [1]
    assert kept_positions(10, 3) == [1, 5, 8]
    assert kept_positions(3, 3) == [0, 1, 2]
    assert kept_positions(2, 4) == [0, 0, 1, 1]


def test_repeat_to_length_tiles_then_cuts() -> None:
    assert repeat_to_length(np.array([1.0, 2.0, 3.0]), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert repeat_to_length(np.array([1.0, 2.0, 3.0]), 2).tolist() == [1, 2]


def square(value: int) -> int:
    return value * value


def test_map_items_keeps_input_order_with_workers() -> None:
    assert list(map_items(square, list(range(20)), workers=2)) == [v * v for v in range(20)]
    with pytest.raises(G2DError, match="--workers"):
        list(map_items(square, [1], workers=0))


HELD = threading.Lock()


def held_lock_is_free(_: int) -> bool:
    """In a worker: whether the module's lock can be taken, i.e. the worker did not inherit it held."""
    acquired = HELD.acquire(timeout=1.0)
    if acquired:
        HELD.release()
    return acquired


def test_workers_do_not_inherit_a_lock_another_thread_holds() -> None:
    """The fork-after-threads hang made deterministic: a thread holds a lock (as torch's pool threads
    may) while the pool starts; a forked worker would inherit it held and could never take it."""
    release = threading.Event()
    holder = threading.Thread(target=lambda: (HELD.acquire(), release.wait(), HELD.release()))
    holder.start()
    try:
        while not HELD.locked():
            time.sleep(0.01)
        assert list(map_items(held_lock_is_free, [0, 1, 2, 3], workers=2)) == [True] * 4
    finally:
        release.set()
        holder.join()
