"""MLA (Zhang et al., CVPR 2024): multimodal learning by alternating unimodal adaptation.

Each batch is learned one modality at a time: modality m's features go through a head
shared by all modalities, with m's own backward pass and optimizer step, so in that
sub-step only m's encoder (and the shared head) move. The shared head's weight gradient is
projected (orthogonal weight modification, OWM) so that learning one modality disturbs as
little as possible what the head learned in earlier sub-steps. At test time the per-modality logits of the
shared head are combined with fixed weights or, as in the paper, per-sample entropy gating.

Differences from the official code, on purpose:
- Its projection never runs: the plugin looks for a parameter named ``module.weight`` in a
  ``Linear`` whose weight is named ``weight``. Here the intended projection runs: from the
  second sub-step of training on, P <- P - P r r^T P / (alpha + r^T P r) with r the batch
  mean of this sub-step's head input (the plugin's order: update, then project), P is
  divided by its Frobenius norm, and the head's weight gradient G becomes G P^T (the bias
  is not projected); alpha = 0.1 ** (1 + batch_index / batches_per_epoch).
- Its entropy gating takes one softmax over the batch dimension and one entropy per batch;
  here each sample's class distribution has its own entropy (the paper's definition), so a
  prediction does not depend on the other samples in its evaluation batch.

The model's fusion module is not used: the shared head replaces it, so MLA runs the same
with every ``model.fusion``. Modalities whose feature sizes differ are first projected to
the largest size by a per-modality linear layer (see ``SharedHead``), trained in that
modality's sub-steps.

SMP (``smp.enabled``): the batch's kappa is applied in every sub-step exactly as in joint
training: a suppressed modality's encoder does not move in its sub-step (under
``freeze``), while the shared head still learns from its features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from g2d.config import Choice
from g2d.core.losses import task_loss
from g2d.data.base import Batches
from g2d.errors import G2DError
from g2d.methods.base import AT_LEAST_0, METHODS, Method, check_numbers
from g2d.methods.heads import SharedHead, encoder_features
from g2d.models.multimodal import ModelOutput


class TestFusion(Choice):
    entropy = "entropy"
    fixed = "fixed"


@dataclass
class MLAParams:
    """test_fusion: ``entropy`` (the paper's uncertainty gating) or ``fixed`` weights;
    fixed_weights: one weight per modality for ``fixed`` (default: equal, the official 0.5/0.5
    for two modalities); projection: the head's gradient modification (off for the ablation)."""

    test_fusion: TestFusion = TestFusion.entropy
    fixed_weights: Optional[list[float]] = None
    projection: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "mla", {"fixed_weights": AT_LEAST_0})


def owm_projector_update(projector: torch.Tensor, direction: torch.Tensor, alpha: float) -> torch.Tensor:
    """One recursive OWM update of the projector with input direction ``r``, Frobenius-normalized.

    ``P - P r r^T P / (alpha + r^T P r)`` maps ``r`` to ``P r * alpha / (alpha + r^T P r)``:
    nearly orthogonal to it when alpha is small against ``r^T P r``.
    """
    k = projector @ direction
    updated = projector - torch.outer(k, k) / (alpha + direction @ k)
    return updated / torch.linalg.matrix_norm(updated)


def entropy_gated(stacked: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ``softmax_m(-H_m)`` over modalities (``exp(max H - H_m)``, normalized).

    ``stacked`` is ``[k, B, C]`` logits; returns the fused ``[B, C]``.
    """
    log_p = stacked.log_softmax(dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    weights = (-entropy).softmax(dim=0)
    return (weights.unsqueeze(-1) * stacked).sum(dim=0)


@METHODS.register("mla")
class MLA(Method):
    """Alternating per-modality sub-steps through one shared, gradient-projected head."""

    label = "MLA"
    data_parallel = "it runs a backward pass and an optimizer step per modality in every batch"
    Params = MLAParams

    def __init__(self, params: MLAParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        if params.test_fusion == "entropy" and task == "regression":
            raise G2DError("config key method.mla.test_fusion: entropy gating needs class probabilities; "
                           "use fixed for regression")
        if params.fixed_weights is not None and len(params.fixed_weights) != len(modalities):
            raise G2DError(f"config key method.mla.fixed_weights: needs {len(modalities)} weights, one per "
                           f"modality ({', '.join(modalities)}), got {list(params.fixed_weights)}")
        weights = params.fixed_weights or [1.0 / len(modalities)] * len(modalities)
        self.fixed_weights = torch.tensor(weights, dtype=torch.float32)
        self.head: SharedHead | None = None
        self.projector: torch.Tensor | None = None
        self.substeps = 0
        self.batch_index = 0
        self.batches_per_epoch = 1

    def build_modules(self, feature_dims: dict[str, int], num_outputs: int) -> nn.Module:
        self.head = SharedHead(feature_dims, num_outputs)
        return self.head

    def setup(self, context: Any) -> None:
        super().setup(context)
        assert self.head is not None, "MLA needs build_modules() before setup()"
        trainer = context.config.trainer
        self.batches_per_epoch = max(1, len(Batches(context.data.splits["train"], trainer.batch_size, shuffle=False,
                                                    drop_last=trainer.drop_last)))
        self.projector = torch.eye(self.head.input_dim, device=context.device)

    def on_epoch_start(self, epoch: int) -> None:
        self.batch_index = 0

    def train_step(self, inputs: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        assert self.head is not None and self.projector is not None
        kappa = ctx.smp_coefficients(epoch, inputs)
        alpha = 0.1 ** (1.0 + self.batch_index / self.batches_per_epoch)
        logits, losses = {}, {}
        for modality in self.modalities:
            ctx.optimizer.zero_grad(set_to_none=True)
            head_input = self.head.project(modality, encoder_features(ctx.model, inputs, modality))
            output = self.head.classify(head_input)
            loss = task_loss(output, inputs["label"], self.task)
            loss.backward()
            if self.params.projection and self.substeps > 0:
                self.projector = owm_projector_update(self.projector, head_input.detach().mean(dim=0), alpha)
                weight = self.head.output.weight
                weight.grad = weight.grad @ self.projector.t()
            self.substeps += 1
            self.update(kappa)
            logits[modality], losses[modality] = output.detach(), loss.detach()
        self.batch_index += 1
        mean_loss = torch.stack(list(losses.values())).mean()
        terms = {f"loss/{m}": value for m, value in losses.items()}
        mean_logits = torch.stack(list(logits.values())).mean(dim=0)
        return self.report(inputs, mean_loss, terms, mean_logits, None, kappa)

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The shared head on each modality; fused by entropy gating or the fixed weights."""
        assert self.head is not None
        per_modality = {m: self.head(m, output.features[m]) for m in self.modalities}
        stacked = torch.stack([per_modality[m] for m in self.modalities])
        if self.params.test_fusion == "entropy":
            return entropy_gated(stacked), per_modality
        weights = self.fixed_weights.to(stacked.device).view(-1, 1, 1)
        return (weights * stacked).sum(dim=0), per_modality

    def state_dict(self) -> dict[str, Any]:
        assert self.projector is not None
        return {"projector": self.projector.detach().cpu(), "substeps": self.substeps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projector = state["projector"].to(self.ctx.device)
        self.substeps = int(state["substeps"])
