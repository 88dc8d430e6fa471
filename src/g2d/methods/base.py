"""The method interface: a method turns the model's (and teachers') outputs into the step's loss.

A method owns its loss, and may own its whole step and epoch hooks; the loop, optimizer,
checkpoints and evaluation live in ``g2d.engine``, and SMP in ``g2d.methods.smp``, so every
method gets them. Nothing outside a method's module tests the method's name.
Each method declares its hyperparameters as a dataclass; the config's ``method`` mapping is
checked against it, so a misspelt key is an error naming ``method.<name>.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from g2d import distributed
from g2d.errors import G2DError
from g2d.methods.balancing import scale_gradients
from g2d.methods.losses import teacher_confidence
from g2d.models.multimodal import ModelOutput


@dataclass
class TeacherOutputs:
    """Frozen unimodal teachers' encoder features and logits, keyed by modality."""

    features: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]

    def stacked_logits(self, modalities: list[str]) -> torch.Tensor:
        return torch.stack([self.logits[m] for m in modalities])


@dataclass
class NoParams:
    """A method without hyperparameters."""


@dataclass
class MethodContext:
    """What a method may use during training, handed over once by the engine before the first step.

    ``parameter_groups`` maps ``"encoder:<modality>"`` and ``"fusion"`` (plus ``"method"`` when
    the method added modules) to the optimizer's param group of that name, so a method can
    change one modality's learning rate.
    """

    model: Any
    optimizer: torch.optim.Optimizer
    data: Any
    device: torch.device
    config: Any
    teachers: Any = None
    modulator: Any = None

    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities)

    @property
    def parameter_groups(self) -> dict[str, dict]:
        return {group["name"]: group for group in self.optimizer.param_groups}

    def teacher_outputs(self, inputs: dict[str, torch.Tensor]) -> TeacherOutputs | None:
        return self.teachers(inputs) if self.teachers is not None else None

    def smp_coefficients(
        self, epoch: int, inputs: dict[str, torch.Tensor], teachers: TeacherOutputs | None = None
    ) -> torch.Tensor | None:
        """SMP's (or partial modulation's) kappa ``[k]`` for this step, or None when no modulator acts now.

        A method that has no teacher outputs of its own passes none: the teachers then run only
        when the modulator acts, not in every step of the run.
        """
        if self.modulator is None or not self.modulator.active(epoch):
            return None
        if teachers is None:
            teachers = self.teacher_outputs(inputs)
        assert teachers is not None, "SMP needs teacher outputs"
        confidence = teacher_confidence(teachers.stacked_logits(self.modalities), inputs["label"], self.data.task)
        if not self.modulator.needs_dataset_confidence:
            # Every process must suppress the same modality: rank on the global batch's confidence.
            confidence = distributed.mean_across_ranks(confidence)
        return self.modulator.coefficients(epoch, confidence)

    def encoder_gradients_scaled(self, kappa: torch.Tensor) -> None:
        """Multiply modality m's encoder gradients by ``kappa[m]``: the modulator's targets, else every parameter."""
        if self.modulator is not None:
            self.modulator.scale_gradients(kappa)
            return
        scale_gradients([self.model.encoder_parameters(m) for m in self.modalities], kappa)

    def reported_kappa(self, kappa: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """What a step reports as kappa: its own, or ones when SMP is configured but not acting now."""
        if kappa is None and self.modulator is not None:
            return torch.ones(len(self.modalities), device=device)
        return kappa

    def optimizer_step(self, kappa: torch.Tensor | None = None) -> None:
        """``optimizer.step()``, honouring the modulator's suppression rule when ``kappa`` came from it."""
        if kappa is not None and self.modulator is not None:
            self.modulator.optimizer_step(self.optimizer, kappa)
        else:
            self.optimizer.step()


def step_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor], logits: torch.Tensor,
               inputs: dict[str, torch.Tensor], task: str, kappa: torch.Tensor | None,
               modalities: list[str]) -> dict[str, torch.Tensor]:
    """The device tensors a step reports: loss, the method's terms, training accuracy and kappa."""
    out = {"loss": loss.detach(), **terms}
    if task == "classification":
        out["accuracy"] = (logits.detach().argmax(dim=-1) == inputs["label"]).float().mean()
    if kappa is not None:
        for index, modality in enumerate(modalities):
            out[f"kappa/{modality}"] = kappa[index].detach()
    return out


class Method:
    """Base class. Most methods only define ``loss``; methods that need several backward passes,
    alternating updates or their own gradient modulation override ``train_step``.

    The engine calls ``setup`` once, then per epoch ``on_epoch_start``, ``train_step`` per
    batch and ``on_epoch_end`` with the validation metrics. ``predict`` turns a model output
    into the fused and per-modality logits that evaluation scores. ``state_dict`` holds what
    a resumed run needs beyond the weights (tensors, numbers, lists, dicts only).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_teachers: ClassVar[bool] = False
    smp_by_default: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    # Whether the fast path may capture ``train_step`` in a CUDA graph: static shapes, no host
    # reads, no data-dependent Python control flow, and host state that changes between steps
    # only through ``capture_key``. A class that overrides ``train_step`` is False unless it
    # says True itself (see ``__init_subclass__``).
    capturable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "train_step" in cls.__dict__ and "capturable" not in cls.__dict__:
            cls.capturable = False

    def __init__(self, params: Any, task: str, modalities: list[str]) -> None:
        self.params = params
        self.task = task
        self.modalities = modalities
        self.context: MethodContext | None = None

    @property
    def ctx(self) -> MethodContext:
        assert self.context is not None, f"method {self.name}: setup() has not been called"
        return self.context

    def build_modules(self, feature_dims: dict[str, int], num_outputs: int) -> nn.Module | None:
        """Trainable modules the method adds to the model (e.g. a shared head); None for most."""
        return None

    def setup(self, context: MethodContext) -> None:
        self.context = context

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def train_step(self, inputs: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; returns device tensors to average over the epoch."""
        ctx = self.ctx
        output = ctx.model(inputs)
        # Teachers run here only for a loss that uses them; SMP asks for them itself while it acts.
        teachers = ctx.teacher_outputs(inputs) if self.uses_teachers else None
        loss, terms = self.loss(output, inputs, teachers)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        kappa = ctx.smp_coefficients(epoch, inputs, teachers)
        if kappa is not None:
            ctx.encoder_gradients_scaled(kappa)
        ctx.optimizer_step(kappa)
        return step_terms(loss, terms, output.logits, inputs, self.task, ctx.reported_kappa(kappa, loss.device),
                          self.modalities)

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused and per-modality logits for evaluation; the model's own by default."""
        return output.logits, output.modality_logits

    def capture_key(self, epoch: int) -> tuple:
        """Host values the step reads that change during training (a schedule's weight, say);
        a captured step is recaptured when this changes. Empty for most methods."""
        return ()

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods whose behaviour changes with the epoch."""

    def on_epoch_end(self, epoch: int, val: dict) -> None:
        """Hook with the epoch's validation metrics (``evaluate``'s dict, losses included)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, when a run resumes."""


def parse_params(params_type: type, values: dict[str, Any], prefix: str) -> Any:
    """Check ``values`` (the config's ``method.<name>`` mapping) against ``params_type``."""
    known = {f.name for f in fields(params_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise G2DError(f"config key {prefix}.{unknown[0]}: not a hyperparameter of this method (allowed: {allowed})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(params_type), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise G2DError(f"config key {prefix}.{key}: {str(exc).splitlines()[0]}") from exc
