"""MMPareto (Wei & Hu, ICML 2024): Pareto integration of multimodal and unimodal gradients.

Per step there is a multimodal loss (the fused logits) and one unimodal loss per modality
(a linear head on that modality's features). For each encoder m, the gradients of the
multimodal loss and of m's unimodal loss are combined: with weights 0.5/0.5 when their
cosine is positive, else with the min-norm (MGDA) weights of the two; the combination
``2 (w_mm g_mm + w_m g_m)`` is rescaled per parameter tensor to at least the norm of the
plain sum ``g_mm + g_m`` and multiplied by gamma (1.5), the boosted magnitude of the paper.
Fusion and head parameters take the plain gradient of the summed losses, as in the
official code.

The unimodal losses use auxiliary per-modality heads by default, as the official model
has (``head_audio``/``head_video`` beside the fused head); ``auxiliary_heads=false`` uses
the fusion's own per-modality logits instead. Per-modality evaluation reads the same
logits the unimodal losses train. The cosine test and the weights stay on the device
(``torch.where``), so a step makes no host synchronization.

SMP (``smp.enabled``): kappa multiplies the integrated encoder gradients, as it multiplies
the plain gradients of joint training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from g2d.core.gradients import dot, gradients
from g2d.core.losses import task_loss
from g2d.methods.base import ABOVE_0, METHODS, Method, check_numbers
from g2d.methods.heads import ModalityHeads
from g2d.models.multimodal import ModelOutput

EPSILON = 1e-12


@dataclass
class MMParetoParams:
    """gamma: the magnitude boost (1.5 in the official code); auxiliary_heads: separate linear
    heads for the unimodal losses (the official design) rather than the fusion's per-modality logits."""

    gamma: float = 1.5
    auxiliary_heads: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "mmpareto", {"gamma": ABOVE_0})


def min_norm_weight(g1: list[torch.Tensor], g2: list[torch.Tensor]) -> torch.Tensor:
    """MGDA for two tasks: the gamma minimizing |gamma g1 + (1 - gamma) g2|.

    Closed form ``(g2 . g2 - g1 . g2) / |g1 - g2|^2``, clipped to [0.001, 0.999] as the
    official min-norm solver clips it, so a zero gradient on one side still lets the other
    through (the rescaling then restores its magnitude).
    """
    v11, v12, v22 = dot(g1, g1), dot(g1, g2), dot(g2, g2)
    return ((v22 - v12) / (v11 + v22 - 2 * v12).clamp_min(EPSILON)).clamp(0.001, 0.999)


def pareto_integrate(multimodal: list[torch.Tensor], unimodal: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """One encoder's new gradient from its multimodal and unimodal gradients (lists of tensors).

    A frozen encoder has no trainable tensors, hence nothing to integrate.
    """
    if not multimodal:
        return []
    norms = (dot(multimodal, multimodal) * dot(unimodal, unimodal)).sqrt()
    cosine = dot(multimodal, unimodal) / norms.clamp_min(EPSILON)
    weight = torch.where(cosine > 0, torch.full_like(cosine, 0.5), min_norm_weight(multimodal, unimodal))
    integrated = []
    for g_mm, g_m in zip(multimodal, unimodal):
        combined = 2 * (weight * g_mm + (1 - weight) * g_m)
        scale = ((g_mm + g_m).norm() / combined.norm().clamp_min(EPSILON)).clamp_min(1.0)
        integrated.append(gamma * scale * combined)
    return integrated


@METHODS.register("mmpareto")
class MMPareto(Method):
    """Multimodal + unimodal losses with per-encoder Pareto gradient integration."""

    label = "MMPareto"
    data_parallel = "it combines per-loss gradients from autograd.grad, which DDP does not average"
    Params = MMParetoParams

    def __init__(self, params: MMParetoParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.heads: ModalityHeads | None = None

    def build_modules(self, feature_dims: dict[str, int], num_outputs: int) -> nn.Module | None:
        if self.params.auxiliary_heads:
            self.heads = ModalityHeads(feature_dims, num_outputs)
        return self.heads

    def unimodal_logits(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        return self.heads(output.features) if self.heads is not None else output.modality_logits

    def train_step(self, inputs: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        model = ctx.model
        output = model(inputs)
        labels = inputs["label"]
        multimodal = task_loss(output.logits, labels, self.task)
        unimodal_logits = self.unimodal_logits(output)
        unimodal = {m: task_loss(unimodal_logits[m], labels, self.task) for m in self.modalities}

        encoders = {m: [p for p in model.encoder_parameters(m) if p.requires_grad] for m in self.modalities}
        in_encoders = {id(p) for params in encoders.values() for p in params}
        shared = [p for p in model.parameters() if p.requires_grad and id(p) not in in_encoders]
        encoder_list = [p for m in self.modalities for p in encoders[m]]
        from_multimodal = iter(gradients(multimodal, encoder_list + shared, retain_graph=True))
        multimodal_grads = {m: [next(from_multimodal) for _ in encoders[m]] for m in self.modalities}
        shared_grads = list(from_multimodal)
        integrated = []
        for index, m in enumerate(self.modalities):
            count = len(encoders[m])
            retain = index < len(self.modalities) - 1
            from_unimodal = gradients(unimodal[m], encoders[m] + shared, retain_graph=retain)
            shared_grads = [g + u for g, u in zip(shared_grads, from_unimodal[count:])]
            integrated += pareto_integrate(multimodal_grads[m], from_unimodal[:count], self.params.gamma)

        ctx.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(encoder_list + shared, integrated + shared_grads):
            param.grad = grad
        loss = (multimodal + sum(unimodal.values())).detach()
        terms = {"multimodal": multimodal.detach(), **{f"unimodal/{m}": v.detach() for m, v in unimodal.items()}}
        return self.finish_step(inputs, epoch, output, loss, terms)

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused logits from the fusion; per-modality logits from the heads the unimodal losses train."""
        return output.logits, self.unimodal_logits(output)
