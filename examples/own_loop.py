"""G²D in a plain PyTorch loop, with g2d's public API only: mfeat pix + mor, the CLI's defaults.

    python examples/own_loop.py --method g2d --epochs 60 --seed 0

prints one JSON line of test accuracies (fused, and each modality's head inside the model) at the
epoch with the best validation accuracy. The model, its initialization, the batch order and the
optimizer are those of ``g2d train configs/mfeat.yaml``, so the training losses are the CLI's.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import g2d

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mfeat.yaml"


def linear(inputs: int, outputs: int) -> nn.Linear:
    """A Linear layer with the paper's initialization: Xavier normal weight, zero bias."""
    layer = nn.Linear(inputs, outputs)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TwoViewNet(nn.Module):
    """An MLP encoder and a linear head per view; the fused logits are the mean of the heads' (late fusion)."""

    def __init__(self, dims: dict[str, int], classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Sequential(linear(d, hidden), nn.ReLU()) for m, d in dims.items()})
        self.heads = nn.ModuleDict({m: linear(hidden, classes) for m in dims})

    def forward(self, x: dict[str, torch.Tensor]):
        features = {m: encoder(x[m]) for m, encoder in self.encoders.items()}
        per_view = {m: self.heads[m](features[m]) for m in features}
        return torch.stack(list(per_view.values())).mean(dim=0), per_view, features


@torch.no_grad()
def accuracies(model: TwoViewNet, split: dict[str, torch.Tensor]) -> dict[str, float]:
    """Test accuracy of the fused logits and of each view's head."""
    model.eval()
    fused, per_view, _ = model(split)
    model.train()
    scores = {"multimodal": fused, **per_view}
    return {name: (logits.argmax(-1) == split["label"]).float().mean().item() for name, logits in scores.items()}


def train(method: str, epochs: int, seed: int, out: str | Path) -> dict:
    """Train Joint-Train or G²D; returns the test accuracies and each epoch's mean training loss."""
    config = g2d.load_config(CONFIG, [f"seed={seed}", f"trainer.epochs={epochs}", f"out={Path(out) / method}"])
    data = g2d.load_dataset(config.dataset)
    views = list(data.modalities)
    train_split = data.splits["train"]
    teachers = {}
    if method == "g2d":  # the CLI's teachers, trained once by g2d and loaded as plain modules
        teachers = {m: g2d.load_teacher(folder) for m, folder in g2d.train_teachers(config).items()}
    torch.manual_seed(seed)
    model = TwoViewNet({m: train_split[m].shape[1] for m in views}, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay)
    loss_fn = g2d.G2DLoss()
    smp = g2d.SMP(encoders=dict(model.encoders), epochs=epochs)
    if teachers:
        with torch.no_grad():
            smp.rank({m: g2d.confidence(teachers[m](train_split[m])[1], train_split["label"]).item() for m in views})
    rows, batch_size = len(train_split["label"]), config.trainer.batch_size
    best, losses = (-1.0, None), []
    for epoch in range(epochs):
        smp.start_epoch(epoch)
        # The CLI's batch order: a permutation seeded by (seed, epoch); a last batch of one row is dropped.
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total = 0.0
        for start in range(0, rows - 1 if rows % batch_size == 1 else rows, batch_size):
            batch = {key: value[order[start:start + batch_size]] for key, value in train_split.items()}
            logits, _, features = model(batch)
            if teachers:
                with torch.no_grad():
                    outputs = {m: teachers[m](batch[m]) for m in views}
                loss, _ = loss_fn(logits=logits, targets=batch["label"], features=features,
                                  teacher_features={m: o[0] for m, o in outputs.items()},
                                  teacher_logits={m: o[1] for m, o in outputs.items()})
            else:
                loss = F.cross_entropy(logits, batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if teachers:
                smp.apply()
            optimizer.step()
            total += loss.item() * len(batch["label"])
        losses.append(total / (rows - rows % batch_size if rows % batch_size == 1 else rows))
        score = accuracies(model, data.splits["val"])["multimodal"]
        if score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    return {"method": method, **accuracies(model, data.splits["test"]), "train_loss": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["joint", "g2d"], default="g2d")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/own_loop", help="folder for the teachers g2d trains")
    args = parser.parse_args()
    result = train(args.method, args.epochs, args.seed, args.out)
    print(json.dumps({key: result[key] for key in ("method", "multimodal", "pix", "mor")}))


if __name__ == "__main__":
    main()
