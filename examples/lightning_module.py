"""G²D in a Lightning Trainer on the CPU, with g2d's public API: mfeat pix + mor, the CLI's defaults.

    python examples/lightning_module.py --method g2d --epochs 60 --seed 0

The loss is ``g2d.G2DLoss`` inside ``training_step``; SMP runs from ``g2d.SMPCallback``. Prints
one JSON line of test accuracies (fused, and each modality's head inside the model) of the
epoch with the best validation accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import g2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_loop import CONFIG, TwoViewNet, accuracies  # noqa: E402  (the same model as the plain loop)


class Rows(Dataset):
    """One split's rows as dicts of view tensors plus ``label``."""

    def __init__(self, split: dict[str, torch.Tensor]) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split["label"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.split.items()}


class G2DModule(pl.LightningModule):
    """Joint-Train (cross-entropy on the fused logits) or G²D (``g2d.G2DLoss`` with frozen teachers)."""

    def __init__(self, model: TwoViewNet, teachers: dict, optim: dict, val: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model, self.teachers, self.optim, self.val = model, teachers, optim, val
        self.loss_fn = g2d.G2DLoss()
        self.best: tuple[float, dict | None] = (-1.0, None)

    def training_step(self, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        logits, _, features = self.model(batch)
        if not self.teachers:
            return F.cross_entropy(logits, batch["label"])
        with torch.no_grad():
            outputs = {m: teacher(batch[m]) for m, teacher in self.teachers.items()}
        loss, _ = self.loss_fn(logits=logits, targets=batch["label"], features=features,
                               teacher_features={m: o[0] for m, o in outputs.items()},
                               teacher_logits={m: o[1] for m, o in outputs.items()})
        return loss

    def on_train_epoch_end(self) -> None:
        score = accuracies(self.model, self.val)["multimodal"]
        if score > self.best[0]:
            self.best = (score, copy.deepcopy(self.model.state_dict()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), **self.optim)


def train(method: str, epochs: int, seed: int, out: str | Path) -> dict:
    """Train with a Lightning Trainer; returns the test accuracies at the best validation epoch."""
    config = g2d.load_config(CONFIG, [f"seed={seed}", f"trainer.epochs={epochs}", f"out={Path(out) / method}"])
    data = g2d.load_dataset(config.dataset)
    views, train_split = list(data.modalities), data.splits["train"]
    teachers = {}
    if method == "g2d":
        teachers = {m: g2d.load_teacher(folder) for m, folder in g2d.train_teachers(config).items()}
    pl.seed_everything(seed, verbose=False)
    model = TwoViewNet({m: train_split[m].shape[1] for m in views}, data.num_classes)
    callbacks = []
    if teachers:
        smp = g2d.SMP(encoders=dict(model.encoders), epochs=epochs)
        with torch.no_grad():
            smp.rank({m: g2d.confidence(teachers[m](train_split[m])[1], train_split["label"]).item() for m in views})
        callbacks.append(g2d.SMPCallback(smp))
    module = G2DModule(model, teachers, {"lr": config.optim.lr, "momentum": config.optim.momentum,
                                         "weight_decay": config.optim.weight_decay}, data.splits["val"])
    loader = DataLoader(Rows(train_split), batch_size=config.trainer.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    model.load_state_dict(module.best[1])
    return {"method": method, **accuracies(model, data.splits["test"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["joint", "g2d"], default="g2d")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/lightning", help="folder for the teachers g2d trains")
    args = parser.parse_args()
    print(json.dumps(train(args.method, args.epochs, args.seed, args.out)))


if __name__ == "__main__":
    main()
