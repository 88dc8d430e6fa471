"""G²D added to a model g2d did not write: two streams whose backbones return feature maps, concat fusion,
a forward returning a tuple (as OGM-GE's ``AVClassifier``), and teachers of another architecture and width.

    python examples/own_model.py --epochs 6 --seed 0

The data are mfeat's 16 x 15 digit images (``pix``) and 76 Fourier coefficients of the digits' contours
(``fou``), as the ``(image, signal, label)`` tuples a loader of your own would give. Lines ending in
``# G²D`` are everything G²D adds to the script (``tests/test_api_any_code.py`` counts them); the two
teacher classes are unimodal models of your own, trained here by ``g2d.train_teacher``. Prints one JSON
line: test accuracy of the student (fused, and each stream's half of the concat head) and of each teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import g2d  # G²D

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mfeat.yaml"


def conv_block(conv: type[nn.Module], norm: type[nn.Module], pool: type[nn.Module], inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(conv(inputs, outputs, 3, padding=1), norm(outputs), nn.ReLU(), pool(2))


class TwoStreamNet(nn.Module):
    """The student: a 2-D conv backbone for the image, a 1-D one for the signal, both returning feature maps;
    the forward pools them, concatenates them into one linear head and returns ``(image, signal, logits)``."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.image_net = nn.Sequential(conv_block(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, 1, 8),
                                       conv_block(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, 8, width))
        self.signal_net = nn.Sequential(conv_block(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, 1, 8),
                                        conv_block(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, 8, width))
        self.fusion = nn.Linear(2 * width, classes)

    def forward(self, image: torch.Tensor, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.image_net(image).mean(dim=(2, 3))  # [B, 16, 4, 3] maps -> [B, 16]
        v = self.signal_net(signal).mean(dim=2)  # [B, 16, 19] maps -> [B, 16]
        return a, v, self.fusion(torch.cat([a, v], dim=1))


class ImageTeacher(nn.Module):
    """A conv net of its own: wider (32 channels), a head on the flattened maps, dropout; returns ``(logits, maps)``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, 1, 16),
                                  conv_block(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, 16, 32))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 3, classes))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.body(image)
        return self.head(maps), maps


class SignalTeacher(nn.Module):
    """An MLP of width 48 on the raw coefficients; returns a dict."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(76, 48), nn.ReLU())
        self.head = nn.Linear(48, classes)

    def forward(self, signal: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.body(signal)
        return {"embedding": hidden, "scores": self.head(hidden)}


def mfeat_tuples(seed: int) -> dict[str, TensorDataset]:
    """Each split of mfeat pix + fou as ``(image [1, 16, 15], signal [1, 76], label)`` rows."""
    config = g2d.load_config(CONFIG, ["dataset.modalities=[pix,fou]", f"seed={seed}"])
    splits = g2d.load_dataset(config.dataset).splits
    return {name: TensorDataset(s["pix"].view(-1, 1, 16, 15), s["fou"].view(-1, 1, 76), s["label"])
            for name, s in splits.items()}


@torch.no_grad()
def accuracies(model: TwoStreamNet, teachers: dict[str, g2d.Teacher], rows: TensorDataset) -> dict[str, float]:
    """Fused accuracy, each stream's through its half of the concat head (OGM-GE's per-modality view), each teacher's."""
    image, signal, label = rows.tensors
    model.eval()
    a, v, logits = model(image, signal)
    model.train()
    weight, bias = model.fusion.weight, model.fusion.bias
    width = a.shape[1]
    scores = {"multimodal": logits, "image": a @ weight[:, :width].T + bias / 2, "signal": v @ weight[:, width:].T + bias / 2,
              "teacher_image": teachers["image"](image)[1], "teacher_signal": teachers["signal"](signal)[1]}
    return {name: round((s.argmax(dim=1) == label).float().mean().item(), 4) for name, s in scores.items()}


def train(epochs: int, seed: int) -> dict:
    """Teachers, then the student with G²D; returns the test accuracies and the teachers' confidences."""
    torch.manual_seed(seed)
    data = mfeat_tuples(seed)
    loader = DataLoader(data["train"], batch_size=16, shuffle=True)
    image_of, signal_of, label_of = (lambda b: b[0]), (lambda b: b[1]), (lambda b: b[2])  # G²D
    image_teacher, signal_teacher = ImageTeacher(), SignalTeacher()  # G²D
    teachers = {  # G²D
        "image": g2d.train_teacher(image_teacher, loader, inputs=image_of, targets=label_of, epochs=epochs,  # G²D
                                   outputs=lambda out: (out[1].mean(dim=(2, 3)), out[0]),  # G²D
                                   optimizer=torch.optim.Adam(image_teacher.parameters(), lr=3e-3)),  # G²D
        "signal": g2d.train_teacher(signal_teacher, loader, inputs=signal_of, targets=label_of, epochs=epochs,  # G²D
                                    outputs=lambda out: (out["embedding"], out["scores"]),  # G²D
                                    optimizer=torch.optim.Adam(signal_teacher.parameters(), lr=3e-3)),  # G²D
    }  # G²D
    confidences = g2d.teacher_confidences(teachers, loader, inputs={"image": image_of, "signal": signal_of},  # G²D
                                          targets=label_of)  # G²D

    model = TwoStreamNet()
    # The student's features are 16 wide, the teachers' 32 and 48: a learnable map each, trained with the model.
    loss_fn = g2d.G2DLoss(projections={"image": (16, 32), "signal": (16, 48)})  # G²D
    optimizer = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.01, momentum=0.9,  # G²D
                                weight_decay=1e-4)
    smp = g2d.SMP(encoders={"image": model.image_net, "signal": model.signal_net}, epochs=epochs)  # G²D
    ranking = smp.rank(confidences)  # G²D
    for epoch in range(epochs):
        smp.start_epoch(epoch)  # G²D
        for image, signal, label in loader:
            a, v, logits = model(image, signal)
            (ta, la), (tv, lv) = teachers["image"](image), teachers["signal"](signal)  # G²D
            # was: loss = F.cross_entropy(logits, label)
            loss, _ = loss_fn(logits=logits, targets=label, features={"image": a, "signal": v},  # G²D
                                  teacher_features={"image": ta, "signal": tv}, teacher_logits={"image": la, "signal": lv})  # G²D
            optimizer.zero_grad()
            loss.backward()
            smp.apply()  # G²D
            optimizer.step()
    return {"ranking": ranking, "confidences": {m: round(c, 4) for m, c in confidences.items()},
            **accuracies(model, teachers, data["test"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(train(args.epochs, args.seed)))


if __name__ == "__main__":
    main()
