"""Dataset factories for ``dataset.name=python`` tests: ``dataset.factory=own_dataset:<function>``."""

import torch
from torch.utils.data import Dataset

from g2d.config import DatasetConfig
from g2d.data.mfeat import load_mfeat


class Rows(Dataset):
    """The rows of a dict of arrays as items; ``noise`` > 0 adds fresh Gaussian noise to every read (augmentation)."""

    def __init__(self, arrays: dict[str, torch.Tensor], noise: float = 0.0) -> None:
        self.arrays = arrays
        self.noise = noise

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {key: value[index] for key, value in self.arrays.items()}
        if self.noise:
            item = {key: value + self.noise * torch.randn_like(value) if value.is_floating_point() else value
                    for key, value in item.items()}
        return item


def mfeat_views(views=("pix", "mor"), noise=0.0):
    """The embedded mfeat views with g2d's own splits, as three Datasets (noise: augmentation of training items)."""
    data = load_mfeat(DatasetConfig(modalities=list(views)))
    return {"train": Rows(data.splits["train"], noise), "validation": Rows(data.splits["val"]),
            "test": Rows(data.splits["test"]), "class_names": data.class_names}


def declared_random():
    """A factory that says its data is not deterministic, although its items read alike."""
    return {**mfeat_views(), "deterministic": False}


def synthetic(task="classification", rows=90, kinds=("vector", "vector")):
    """Seeded random modalities of the given kinds; labels (3 classes) or targets (dollars) depend on the first."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"vector": (6,), "sequence": (4, 3), "image": (1, 8, 8), "video": (2, 1, 8, 8), "tokens": (5,)}
    arrays = {}
    for number, kind in enumerate(kinds):
        name = f"{kind}{number}"
        if kind == "tokens":
            arrays[name] = torch.randint(0, 30, (rows, 5), generator=generator)
            arrays[f"{name}.mask"] = torch.arange(5).expand(rows, 5) < torch.randint(1, 6, (rows, 1), generator=generator)
        else:
            arrays[name] = torch.randn((rows, *shapes[kind]), generator=generator)
    signal = next(iter(arrays.values())).float().flatten(1)[:, 0].contiguous()
    if task == "classification":
        arrays["label"] = torch.bucketize(signal, torch.tensor([-0.4, 0.4]))
    else:
        arrays["target"] = 100_000 + 20_000 * signal.double()
    cut = [rows * 2 // 3, rows * 5 // 6]
    parts = [{key: value[start:stop] for key, value in arrays.items()}
             for start, stop in ((0, cut[0]), (cut[0], cut[1]), (cut[1], rows))]
    return tuple(Rows(part) for part in parts)


NOT_A_FUNCTION = 3


def broken():
    raise RuntimeError("the data server is down")


def ragged():
    """Training items whose 'a' is 4 long, except item 2 (5 long)."""
    train = [{"a": torch.zeros(5 if i == 2 else 4), "label": i % 2} for i in range(6)]
    return train, train[:2], train[:2]


def no_label():
    items = [{"a": torch.zeros(4)} for _ in range(4)]
    return items, items, items


def a_string():
    return "train.csv"


def with_nan():
    """mfeat whose training split holds one NaN in 'pix' (a broken row a user's loader let through)."""
    made = mfeat_views()
    arrays = {key: value.clone() for key, value in made["train"].arrays.items()}
    arrays["pix"][3, 0] = float("nan")
    return {**made, "train": Rows(arrays)}


def one_modality():
    """mfeat's 'pix' view alone."""
    return mfeat_views(views=("pix",))


def one_class():
    """mfeat whose every item is labelled 0."""
    made = mfeat_views()
    splits = {}
    for split in ("train", "validation", "test"):
        arrays = dict(made[split].arrays)
        arrays["label"] = torch.zeros_like(arrays["label"])
        splits[split] = Rows(arrays)
    return splits


CALLS_FILE_ENV = "G2D_TEST_FACTORY_CALLS"


def counted():
    """mfeat, with one line appended to the file ``$G2D_TEST_FACTORY_CALLS`` per call (to count the calls)."""
    import os

    with open(os.environ[CALLS_FILE_ENV], "a") as handle:
        handle.write("call\n")
    return mfeat_views()
