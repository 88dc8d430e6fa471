"""ReconBoost (Hua et al., ICML 2024): modality-alternating boosting with reconcilement.

Training runs in stages; stage s trains one modality, ``modalities[s % k]``, then corrects
the whole ensemble:
- boosting (``stage_epochs`` epochs): only modality m's learner ``f_m = head(encoder_m)``
  learns, with the reconcilement-weighted loss
  ``(w1 - w2 q_y) * (-log softmax(f_m)_y) / C`` per sample, where ``q = softmax(F_-m)`` is
  the detached ensemble of the other modalities trained so far (``F_-m`` = boost_rate times
  the sum of their logits; zeros, i.e. uniform q, while there are none). Minus w2 times
  the reconcilement KL is what makes samples the others already get right count less
  (gradient boosting). The 1/C (averaging over classes) is the official code's. From the
  second stage on, ``ga_weight * MSE(softmax(f_m), softmax(f_prev))`` is added, f_prev
  being the (detached) learner of the previous stage's modality;
- global rectification (``rectify_epochs`` epochs): the ensemble
  ``boost_rate * sum_j f_j`` over the modalities trained so far, learnable boost_rate and
  head included, is trained with cross-entropy.
The optimizer's state (momentum) is reset at the start of each phase, as the official code
builds a new optimizer per phase. All learners share one head (the official
``common_space``, an MLP with ``head_hidden`` units); the model's fusion is not used.
Prediction: the fused logits are the ensemble over the modalities trained so far, the
per-modality logits each learner's own.

Differences from the official code, on purpose:
- Its "GA" term compares ``out.detach().softmax()`` with ``pre_out.detach().softmax()``:
  with both inputs detached it contributes no gradient. Here the current learner carries
  the gradient (the previous learner is the fixed target), which is what the term is for.
- With no other learner yet it uses one random constant as the ensemble's output (a
  softmax over a single column, q_y = 1); here the empty ensemble is zero logits (q_y = 1/C).
- The authors start from pretrained unimodal encoders (``--use_pretrain``); here encoders
  start from scratch like every other method.

The stage follows the epoch, so ``state_dict`` only records it for prediction after a
resumed run. Classification only. SMP is refused: the stages already decide which modality
learns when, and the boosting phase trains one encoder alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from g2d.core.losses import task_loss
from g2d.methods.base import ABOVE_0, AT_LEAST_0, AT_LEAST_1, METHODS, Method, check_numbers
from g2d.methods.heads import SharedHead, encoder_features
from g2d.models.multimodal import ModelOutput

BOOST, RECTIFY = "boost", "rectify"


@dataclass
class ReconBoostParams:
    """Defaults are the official CREMA-D command's: 4 boosting + 4 rectification epochs per
    stage, weight1 5 and weight2 1, GA weight 0.5, a 256-unit common head, boost rate 1."""

    stage_epochs: int = 4
    rectify_epochs: int = 4
    weight1: float = 5.0
    weight2: float = 1.0
    ga_weight: float = 0.5
    head_hidden: int = 256
    boost_rate: float = 1.0

    def __post_init__(self) -> None:
        check_numbers(self, "reconboost", {"stage_epochs": AT_LEAST_1, "rectify_epochs": AT_LEAST_0,
            "weight1": AT_LEAST_0, "weight2": AT_LEAST_0, "ga_weight": AT_LEAST_0, "head_hidden": AT_LEAST_1,
            "boost_rate": ABOVE_0})


def stage_plan(epoch: int, stage_epochs: int, rectify_epochs: int, num_modalities: int) -> tuple[int, int, str]:
    """(stage, index of the modality it trains, phase) for a 0-based epoch."""
    length = stage_epochs + rectify_epochs
    stage = epoch // length
    phase = BOOST if epoch % length < stage_epochs else RECTIFY
    return stage, stage % num_modalities, phase


def reconcilement_loss(logits: torch.Tensor, ensemble: torch.Tensor, labels: torch.Tensor,
                       weight1: float, weight2: float) -> torch.Tensor:
    """Batch mean of ``(w1 - w2 q_y) * (-log p_y) / C`` with p = softmax(logits), q = softmax(ensemble)."""
    log_p = logits.log_softmax(dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
    q = ensemble.detach().softmax(dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (-(weight1 - weight2 * q) * log_p).mean() / logits.shape[-1]


class BoostModules(nn.Module):
    """The learners' shared head and the ensemble's learnable scale."""

    def __init__(self, feature_dims: dict[str, int], num_outputs: int, hidden: int, boost_rate: float) -> None:
        super().__init__()
        self.head = SharedHead(feature_dims, num_outputs, hidden)
        self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))


@METHODS.register("reconboost")
class ReconBoost(Method):
    """One modality per stage with a reconcilement-weighted loss, then rectification of the ensemble."""

    label = "ReconBoost"
    data_parallel = "it alternates stages with several backward passes per batch"
    accepts_smp = "it schedules the modalities itself (one per stage)"
    tasks = ("classification",)
    Params = ReconBoostParams

    def __init__(self, params: ReconBoostParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.boosting: BoostModules | None = None
        self.stage = 0
        self.trained_index = 0
        self.phase = BOOST

    def build_modules(self, feature_dims: dict[str, int], num_outputs: int) -> nn.Module:
        self.boosting = BoostModules(feature_dims, num_outputs, self.params.head_hidden, self.params.boost_rate)
        return self.boosting

    def plan(self, epoch: int) -> tuple[int, int, str]:
        return stage_plan(epoch, self.params.stage_epochs, self.params.rectify_epochs, len(self.modalities))

    def members(self) -> list[str]:
        """Modalities trained in this stage or before: the ensemble's learners."""
        return self.modalities[: min(self.stage + 1, len(self.modalities))]

    def on_epoch_start(self, epoch: int) -> None:
        self.stage, self.trained_index, self.phase = self.plan(epoch)
        offset = epoch % (self.params.stage_epochs + self.params.rectify_epochs)
        if offset in (0, self.params.stage_epochs):
            self.ctx.optimizer.state.clear()

    def learner(self, inputs: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        assert self.boosting is not None
        return self.boosting.head(modality, encoder_features(self.ctx.model, inputs, modality))

    def train_step(self, inputs: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        assert self.boosting is not None
        labels = inputs["label"]
        if self.phase == BOOST:
            loss, terms, logits = self.boosting_loss(inputs, labels)
        else:
            logits = self.boosting.boost_rate * sum(self.learner(inputs, m) for m in self.members())
            loss = task_loss(logits, labels, self.task)
            terms = {"rectify": loss.detach()}
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.update(None)
        return self.report(inputs, loss, terms, logits, None, None)

    def boosting_loss(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        assert self.boosting is not None
        modality = self.modalities[self.trained_index]
        logits = self.learner(inputs, modality)
        with torch.no_grad():
            others = [self.learner(inputs, m) for m in self.members() if m != modality]
            ensemble = self.boosting.boost_rate * sum(others) if others else torch.zeros_like(logits)
        boost = reconcilement_loss(logits, ensemble, labels, self.params.weight1, self.params.weight2)
        terms = {"boost": boost.detach()}
        loss = boost
        if self.stage > 0 and self.params.ga_weight > 0:
            previous = self.modalities[(self.stage - 1) % len(self.modalities)]
            with torch.no_grad():
                target = self.learner(inputs, previous).softmax(dim=-1)
            ga = F.mse_loss(logits.softmax(dim=-1), target)
            terms["ga"] = ga.detach()
            loss = boost + self.params.ga_weight * ga
        return loss, terms, logits

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The ensemble over the modalities trained so far, and each modality's learner."""
        assert self.boosting is not None
        per_modality = {m: self.boosting.head(m, output.features[m]) for m in self.modalities}
        fused = self.boosting.boost_rate * sum(per_modality[m] for m in self.members())
        return fused, per_modality

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
