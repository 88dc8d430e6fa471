"""AGM (Li et al., ICCV 2023): adaptive gradient modulation from Shapley-style mono-modal outputs.

Each step, the fused logits f(S) of every proper subset S of modalities are computed with
the other modalities' inputs zeroed (eval mode, no gradient, as the official code runs its
padded passes); the full set is the training forward itself. Modality m's output is its
Shapley value with f(empty) counted as 0, i.e. the exact Shapley value plus an equal 1/k
share of f(empty), so the outputs sum to the fused logits. For k = 2 this is the official
``(f(a,v) - f(0,v) + f(a,0)) / 2`` and for k = 3 the official three-modality formula.
This needs 2^k - 2 extra forward passes per step; ``max_modalities`` (default 4) guards
against an accidental k where that explodes.

Scores: s_m = batch mean of -log p_m(y) (probabilities floored at 1e-8), or the MSE of
sigmoid(output) for regression. The current ratio is r_m = exp(mean_{j != m} s_j - s_m)
(the code's ``exp((mean - s_m) * k / (k - 1))``), the target ratio the same of the running
averages of the scores over all steps so far (the code's cumulative mean, taken before this
step's update). The coefficient exp(alpha * min(target - r_m, clip)) multiplies modality
m's encoder gradients while ``modulation_starts <= epoch <= modulation_ends``.

As in the official code, when any fusion gradient entry exceeds ``grad_clip`` in magnitude
the whole model's gradient norm is clipped to ``grad_clip`` (computed on the device, no host
sync): coefficients up to exp(alpha * clip) would otherwise blow the step up.

Differences from the official code: the coefficient scales each encoder's gradients
directly. The official code routes it through backward hooks on the mono-modal outputs,
whose padded passes carry gradient, so each encoder also gets its own coefficient there; but
the hooks rescale the fusion head's gradient as well, which ours leaves alone. The official
CREMA-D code caps the ratio gap at ``clip`` (10) and has no gradient clip; its AV-MNIST code
has no cap and clips the gradient norm at 1.0; ours has both (an mfeat run diverged without
the clip). With ``smp.enabled=true``, SMP's kappa
multiplies the gradients after AGM's modulation and clip, as for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from g2d.core.balancing import in_window, scale_gradients
from g2d.errors import G2DError
from g2d.methods.base import ABOVE_0, AT_LEAST_0, AT_LEAST_1, METHODS, MethodContext, check_numbers
from g2d.methods.joint import JointTrain
from g2d.models.multimodal import ModelOutput


@dataclass
class AGMParams:
    """alpha: modulation strength (1.5 CREMA-D, 2.5 AV-MNIST, 4.0 UR-Funny in the paper);
    clip bounds target - current ratio before alpha (10 in the two-modality code, 7 in the
    three-modality one); ``modulation_ends``: last modulated epoch (20, the official argparse
    default; null modulates until the end); grad_clip: the official AV-MNIST code's conditional
    gradient-norm clip (null turns it off)."""

    alpha: float = 2.5
    clip: float = 10.0
    modulation_starts: int = 0
    modulation_ends: Optional[int] = 20
    grad_clip: Optional[float] = 1.0
    max_modalities: int = 4

    def __post_init__(self) -> None:
        check_numbers(self, "agm", {"alpha": AT_LEAST_0, "clip": ABOVE_0, "modulation_starts": AT_LEAST_0,
            "modulation_ends": AT_LEAST_0, "grad_clip": ABOVE_0, "max_modalities": AT_LEAST_1})


def shapley_weights(k: int) -> torch.Tensor:
    """``[k, 2^k]`` matrix W with out_m = sum_S W[m, S] f(S), subsets S as bit masks, f(empty) = 0."""
    weights = torch.zeros(k, 2**k, dtype=torch.float64)
    for m in range(k):
        bit = 1 << m
        for subset in range(2**k):
            if subset & bit:
                continue
            size = bin(subset).count("1")
            w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            weights[m, subset | bit] += w
            if subset:
                weights[m, subset] -= w
    return weights


def mono_scores(mono_logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """``[k]`` per-modality scores from ``[k, B, C]`` logits: mean -log p(y) floored at 1e-8, or MSE for regression."""
    if task == "regression":
        return (torch.sigmoid(mono_logits.squeeze(-1)) - labels.float().unsqueeze(0)).pow(2).mean(dim=1)
    probabilities = F.softmax(mono_logits.float(), dim=-1)
    index = labels.view(1, -1, 1).expand(probabilities.shape[0], -1, 1)
    true_class = probabilities.gather(-1, index).squeeze(-1)
    return -torch.log(true_class.clamp_min(1e-8)).mean(dim=1)


def clip_large_gradients(parameters: list[torch.nn.Parameter], watched: list[torch.nn.Parameter], limit: float) -> None:
    """If any gradient entry of ``watched`` exceeds ``limit`` in magnitude, clip the total norm of
    ``parameters``' gradients to ``limit``; the decision is a device tensor, so nothing syncs."""
    grads = [p.grad for p in parameters if p.grad is not None]
    watched_grads = [p.grad for p in watched if p.grad is not None]
    if not grads or not watched_grads:
        return
    large = torch.stack([g.abs().max() for g in watched_grads]).max() > limit
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.where(large, (limit / (total + 1e-6)).clamp(max=1.0), torch.ones_like(total))
    for g in grads:
        g.mul_(factor)


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """r_m = exp(mean of the other modalities' scores - s_m); above 1 for a modality doing better than the rest."""
    k = scores.shape[0]
    others = (scores.sum() - scores) / (k - 1)
    return torch.exp(others - scores)


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float, clip: float) -> torch.Tensor:
    """exp(alpha * min(target ratio - current ratio, clip)), the target from the running average scores."""
    gap = discrepancy_ratios(running) - discrepancy_ratios(scores)
    return torch.exp(alpha * gap.clamp(max=clip))


@METHODS.register("agm")
class AGM(JointTrain):
    """Joint training (its task loss) with each encoder's gradients scaled by AGM's adaptive coefficient."""

    label = "AGM"
    data_parallel = (
        "its step runs extra forward passes with modalities zeroed and scales gradients through its own "
        "hooks, outside DDP's averaging"
    )
    Params = AGMParams
    capturable = True

    def __init__(self, params: AGMParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        k = len(modalities)
        if k < 2:
            raise G2DError("method.name=agm needs at least two modalities (dataset.modalities)")
        if k > params.max_modalities:
            raise G2DError(
                f"config key method.agm.max_modalities: exact Shapley outputs for {k} modalities need "
                f"{2**k - 2} extra forward passes per step; raise max_modalities (now {params.max_modalities}) to accept that"
            )
        self.weights = shapley_weights(k)
        # Device tensors updated in place, so a captured step reads the current values.
        self.running = torch.zeros(k)
        self.steps = torch.zeros(())
        self.modulating = in_window(0, params.modulation_starts, params.modulation_ends)
        self.encoders: list[list[nn.Parameter]] = []

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self.weights = self.weights.to(context.device, torch.float32)
        self.running = self.running.to(context.device)
        self.steps = self.steps.to(context.device)
        self.encoders = [context.model.encoder_parameters(m) for m in self.modalities]

    @torch.no_grad()
    def subset_logits(self, inputs: dict[str, torch.Tensor], full: torch.Tensor) -> torch.Tensor:
        """``[2^k, B, C]`` fused logits with the modalities outside each subset zeroed; f(empty) = 0, f(all) = ``full``."""
        model = self.ctx.model
        k = len(self.modalities)
        outputs = [torch.zeros_like(full)]
        was_training = model.training
        model.eval()
        for subset in range(1, 2**k - 1):
            masked = dict(inputs)
            for index, modality in enumerate(self.modalities):
                if not subset & (1 << index):
                    masked[modality] = torch.zeros_like(inputs[modality])
            outputs.append(model(masked).logits)
        model.train(was_training)
        outputs.append(full.detach())
        return torch.stack(outputs)

    def mono_logits(self, inputs: dict[str, torch.Tensor], full: torch.Tensor) -> torch.Tensor:
        """``[k, B, C]`` Shapley-style per-modality outputs (they sum to ``full``)."""
        return torch.einsum("ms,sbc->mbc", self.weights, self.subset_logits(inputs, full))

    def on_epoch_start(self, epoch: int) -> None:
        self.modulating = in_window(epoch, self.params.modulation_starts, self.params.modulation_ends)

    def modulate_gradients(self, output: ModelOutput, batch: dict[str, torch.Tensor],
                           terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """This step's mono-modal scores (reported), AGM's coefficients on each encoder inside the
        window, the running scores' update after them (the official order), then the conditional clip."""
        scores = mono_scores(self.mono_logits(batch, output.logits), batch["label"], self.task)
        terms.update({f"score/{m}": scores[i] for i, m in enumerate(self.modalities)})
        coefficients = agm_coefficients(scores, self.running, self.params.alpha, self.params.clip)
        self.steps.add_(1)
        self.running.add_((scores - self.running) / self.steps)
        if self.modulating:
            scale_gradients(self.encoders, coefficients)
        else:
            coefficients = torch.ones_like(coefficients)
        if self.params.grad_clip is not None:
            model = self.ctx.model
            clip_large_gradients(list(model.parameters()), list(model.fusion.parameters()), self.params.grad_clip)
        return coefficients

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.detach().cpu(), "steps": int(self.steps.item())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.running.copy_(state["running"])
            self.steps.fill_(int(state["steps"]))
