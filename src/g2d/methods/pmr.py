"""PMR (Fan et al., CVPR 2023): prototypical modal rebalance.

At the start of every epoch each modality's class prototypes are the mean encoder features
per class over the training split (eval mode, no gradient), blended with the previous
epoch's prototypes by ``momentum`` (the official code's ``momentum_coef`` 0.2; the first
epoch takes the plain means). A prototype classifier, softmax over minus the Euclidean
distances to the prototypes, scores each modality: s_m = batch mean of its true-class
probability. Against the best-scoring modality, a modality m with ratio
rho_m = s_max / s_m > 1 is slow and is stimulated by the prototypical cross-entropy (PCE)
weighted alpha * clip(rho_m - 1, 0, 1); during the first ``entropy_epochs`` of the window
the best-scoring modality's prototype entropy (PER, batch mean) is subtracted, weighted
mu * clip(s_max / s_min - 1, 0, 1), which keeps it from converging prematurely. For k = 2
these are the paper's two coefficients for the weak and the dominant modality. All of it
runs for ``modulation_starts <= epoch <= modulation_ends`` (default 0..100, the official
code's setting for 150 epochs); the task loss is the fused cross-entropy.

Differences from the official code, each deliberate: the official code weights the weak
modality's PCE by the constant alpha and has no entropy term; we follow the paper's
ratio-scaled weight and PER (as GeWu-Lab's BalanceBenchmark re-implements them). The
official prototypes average only the first tenth of a shuffled training pass; ours average
the whole training split. Distances carry a 1e-8 floor under the square root, so a feature
that coincides with its prototype has a finite gradient. The values of ``mu`` and
``entropy_epochs`` could not be checked against the paper text here; they are documented
defaults to tune. Classification only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from g2d.core.balancing import in_window
from g2d.core.losses import task_loss
from g2d.data.base import Batches, to_device
from g2d.methods.base import AT_LEAST_0, FRACTION, METHODS, Method, TeacherOutputs, check_numbers
from g2d.models.multimodal import ModelOutput


@dataclass
class PMRParams:
    """alpha weighs PCE, mu weighs PER (first ``entropy_epochs`` of the window); momentum blends prototypes."""

    alpha: float = 1.0
    mu: float = 0.1
    entropy_epochs: int = 15
    momentum: float = 0.2
    modulation_starts: int = 0
    modulation_ends: Optional[int] = 100

    def __post_init__(self) -> None:
        check_numbers(self, "pmr", {"alpha": AT_LEAST_0, "mu": AT_LEAST_0, "entropy_epochs": AT_LEAST_0,
            "momentum": FRACTION, "modulation_starts": AT_LEAST_0, "modulation_ends": AT_LEAST_0})


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, d]`` mean feature per class; a class without samples gets zeros."""
    sums = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts.unsqueeze(1)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` minus the Euclidean distance of each feature to each class prototype."""
    squared = (features.pow(2).sum(1, keepdim=True) + prototypes.pow(2).sum(1) - 2 * features @ prototypes.t())
    return -torch.sqrt(squared.clamp_min(0) + 1e-8)


def pmr_coefficients(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-modality PCE weights clip(s_max/s_m - 1, 0, 1) and PER weights (the best modality's share of clip(s_max/s_min - 1))."""
    best = scores.max()
    pce = (best / scores.clamp_min(1e-12) - 1).clamp(0, 1)
    dominant = (scores == best).to(scores.dtype)
    per = dominant / dominant.sum() * (best / scores.min().clamp_min(1e-12) - 1).clamp(0, 1)
    return pce, per


@METHODS.register("pmr")
class PMR(Method):
    """Fused cross-entropy plus prototype-based stimulation of the slow modalities."""

    label = "PMR"
    tasks = ("classification",)
    Params = PMRParams
    capturable = True

    def __init__(self, params: PMRParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        # Prototypes are device tensors updated in place each epoch; the window flags are host
        # values set per epoch, so a captured step is re-captured when they change.
        self.prototypes: dict[str, torch.Tensor] = {}
        self.modulating, self.entropy = self.window(0)

    def window(self, epoch: int) -> tuple[bool, bool]:
        """Whether ``epoch`` has the prototype loss, and whether it also has the entropy term."""
        starts = self.params.modulation_starts
        modulating = in_window(epoch, starts, self.params.modulation_ends)
        return modulating, modulating and epoch < starts + self.params.entropy_epochs

    @torch.no_grad()
    def compute_prototypes(self) -> dict[str, torch.Tensor]:
        """Class-mean features per modality over the training split, in eval mode."""
        ctx = self.ctx
        model, data = ctx.model, ctx.data
        was_training = model.training
        model.eval()
        labels = []
        features: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for batch in Batches(data.splits["train"], ctx.config.trainer.eval_batch_size, shuffle=False):
            inputs = to_device(batch, data, ctx.device)
            output = model(inputs)
            for m in self.modalities:
                features[m].append(output.features[m].float())
            labels.append(inputs["label"])
        model.train(was_training)
        label = torch.cat(labels)
        return {m: class_means(torch.cat(features[m]), label, data.num_classes) for m in self.modalities}

    def on_epoch_start(self, epoch: int) -> None:
        self.modulating, self.entropy = self.window(epoch)
        fresh = self.compute_prototypes()
        momentum = self.params.momentum
        if self.prototypes:
            fresh = {m: (1 - momentum) * fresh[m] + momentum * self.prototypes[m] for m in self.modalities}
        self.set_prototypes(fresh)

    def set_prototypes(self, prototypes: dict[str, torch.Tensor]) -> None:
        """Copy into the existing prototype tensors (their storage is what a captured step reads)."""
        for m, value in prototypes.items():
            if m in self.prototypes and self.prototypes[m].shape == value.shape:
                self.prototypes[m].copy_(value)
            else:
                self.prototypes[m] = value.to(self.ctx.device).clone()

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["label"]
        task = task_loss(output.logits, labels, self.task)
        if not self.modulating:
            return task, {"task": task.detach()}
        logits = torch.stack([prototype_logits(output.features[m].float(), self.prototypes[m]) for m in self.modalities])
        log_p = F.log_softmax(logits, dim=-1)  # [k, B, C]
        true_class = log_p.gather(-1, labels.view(1, -1, 1).expand(len(self.modalities), -1, 1)).squeeze(-1)
        pce = -true_class.mean(dim=1)
        pce_weight, per_weight = pmr_coefficients(true_class.detach().exp().mean(dim=1))
        proto = self.params.alpha * (pce_weight * pce).sum()
        loss = task + proto
        terms = {"task": task.detach(), "proto": proto.detach()}
        if self.entropy:
            entropy = -(log_p.exp() * log_p).sum(-1).mean(dim=1)  # [k]
            regulariser = self.params.mu * (per_weight * entropy).sum()
            loss = loss - regulariser
            terms["entropy"] = regulariser.detach()
        return loss, terms

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": {m: p.detach().cpu() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.set_prototypes(state["prototypes"])
