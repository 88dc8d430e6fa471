"""The method interface and the one training step (``Method.train_step``) that methods plug into.

A method gives its loss and, where it has them, its own gradient modulation and learning-rate
factors; the step is written once here, so every method gets SMP the same way (docs/methods.md,
"The training step"). The loop, optimizer, checkpoints and evaluation live in ``g2d.training.engine``,
SMP in ``g2d.core.smp``. Nothing outside a method's module tests the method's name.
Each method declares its hyperparameters as a dataclass; the config's ``method`` mapping is
checked against it, so a misspelt key is an error naming ``method.<name>.<key>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from g2d.config import ExperimentConfig, parse_settings
from g2d.core.balancing import scaled_learning_rates
from g2d.core.losses import FEATURE_REDUCTIONS, teacher_confidence
from g2d.core.smp import SMP
from g2d.data.base import MultimodalData
from g2d.errors import G2DError
from g2d.models.multimodal import ModelOutput, MultimodalModel
from g2d.registry import Registry


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

    ``model`` is the run's model (under DDP, ``g2d.training.distributed.DataParallelModel``, which
    answers the model's attributes). ``parameter_groups`` maps ``"encoder:<modality>"`` and
    ``"fusion"`` (plus ``"method"`` when the method added modules) to the optimizer's param group
    of that name. ``teachers`` are the run's frozen teachers, called on a batch
    (``g2d.training.teacher_cache.FrozenTeachers``, a layer above, hence the callable type);
    ``modulator`` is its SMP.
    ``mean_across_processes`` averages a tensor over the processes training together (the loop
    passes torch.distributed's all-reduce under DDP; one process keeps the tensor as it is).
    """

    model: MultimodalModel
    optimizer: torch.optim.Optimizer
    data: MultimodalData
    device: torch.device
    config: ExperimentConfig
    teachers: Callable[[dict[str, torch.Tensor]], TeacherOutputs] | None = None
    modulator: SMP | None = None
    mean_across_processes: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor

    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities)

    @property
    def parameter_groups(self) -> dict[str, dict]:
        return {group["name"]: group for group in self.optimizer.param_groups}

    def teacher_outputs(self, inputs: dict[str, torch.Tensor]) -> TeacherOutputs:
        """The frozen teachers' features and logits for this training batch."""
        assert self.teachers is not None, "this run has no teachers"
        return self.teachers(inputs)

    def smp_acts(self, epoch: int) -> bool:
        return self.modulator is not None and self.modulator.active(epoch)

    def smp_coefficients(
        self, epoch: int, inputs: dict[str, torch.Tensor], teachers: TeacherOutputs | None = None
    ) -> torch.Tensor | None:
        """SMP's (or partial modulation's) kappa ``[k]`` for this step, or None when no modulator acts now.

        Without teacher outputs of the caller's own, the teachers run here, so a method whose
        loss needs none pays for them only inside SMP's window.
        """
        if not self.smp_acts(epoch):
            return None
        if teachers is None:
            teachers = self.teacher_outputs(inputs)
        confidence = teacher_confidence(teachers.stacked_logits(self.modalities), inputs["label"], self.data.task)
        if not self.modulator.needs_dataset_confidence:
            # Every process must suppress the same modality: rank on the global batch's confidence.
            confidence = self.mean_across_processes(confidence)
        return self.modulator.coefficients(epoch, confidence)

    def applied_coefficients(self, own: torch.Tensor | None, smp: torch.Tensor | None,
                             device: torch.device) -> torch.Tensor | None:
        """What multiplied each modality's encoder gradients in a step: the method's own coefficients
        times SMP's kappa; ones while SMP is configured but outside its window, so every epoch
        reports the same terms. None when neither exists."""
        if own is not None and smp is not None:
            return own * smp
        if own is not None or smp is not None:
            return own if own is not None else smp
        return torch.ones(len(self.modalities), device=device) if self.modulator is not None else None

    def optimizer_step(self, kappa: torch.Tensor | None = None) -> None:
        """``optimizer.step()``, honouring SMP's suppression rule (``freeze``) when ``kappa`` came from it."""
        if kappa is not None:
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
    """Base class. A method plugs into the one training step (``train_step``) through small hooks:

    - ``loss``: the step's loss and the terms it reports (required);
    - ``modulate_gradients``: the method's own per-modality gradient modulation after backward
      (OGM-GE's and AGM's coefficients), returning the coefficients it applied;
    - ``learning_rate_factors``: per param group factors on the learning rate for the step
      (MSLR's rates, MSES's stops).

    Only methods that need several backward passes or alternating updates (MLA, MMPareto,
    ReconBoost, DLMG's learned weights) override ``train_step``; once their gradients are in
    place they hand over to the shared tail (``finish_step``, or ``update`` and ``report``).
    The engine calls ``setup`` once, then per epoch ``on_epoch_start``, ``train_step`` per batch and ``on_epoch_end``
    with the validation metrics. ``predict`` turns a model output into the fused and
    per-modality logits that evaluation scores. ``state_dict`` holds what a resumed run needs
    beyond the weights (tensors, numbers, lists, dicts only).
    """

    # The method's record: the one place its facts live; the CLI, the preflight check
    # (``g2d.runs.check``), sweeps, tables and reports read them from here.
    name: ClassVar[str] = ""  # given by ``@METHODS.register(name)``
    label: ClassVar[str] = ""  # the paper's name, in tables and reports
    Params: ClassVar[type] = NoParams
    uses_teachers: ClassVar[bool] = False
    smp_by_default: ClassVar[bool] = False
    # True, or the reason the method does not combine with SMP (refused before anything trains).
    accepts_smp: ClassVar[bool | str] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    # Opt-in: whether the fast path may capture ``train_step`` in a CUDA graph. A capturable
    # step has static shapes, reads nothing back to the host, and keeps state that changes
    # during training in device tensors updated in place; host values it reads may change
    # only between epochs (``g2d.training.fast`` re-captures when they do, see docs/performance.md).
    capturable: ClassVar[bool] = False
    # True, or the reason the method cannot train under DDP (torchrun); undeclared (None), a method
    # that keeps the shared step may, one that owns its step may not (``data_parallel_refusal``).
    data_parallel: ClassVar[bool | str | None] = None

    def __init__(self, params: Any, task: str, modalities: list[str]) -> None:
        self.params = params
        self.task = task
        self.modalities = modalities
        self.context: MethodContext | None = None

    @classmethod
    def data_parallel_refusal(cls, params: Any) -> str | None:
        """Why the method with ``params`` cannot train under DDP, or None when it can."""
        if isinstance(cls.data_parallel, str):
            return cls.data_parallel
        owns_step = any("train_step" in vars(klass) for klass in cls.__mro__ if klass is not Method)
        if cls.data_parallel is None and owns_step:
            return "it owns its training step and does not declare data_parallel = True"
        return None

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

    def modulate_gradients(self, output: ModelOutput, batch: dict[str, torch.Tensor],
                           terms: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Change the encoders' gradients the method's own way, after backward; return the ``[k]``
        coefficients applied (or None). It may add what it measured to the step's ``terms``."""
        return None

    def learning_rate_factors(self) -> dict[str, float]:
        """Factors on the learning rate of named param groups (``encoder:<m>``) for this epoch's steps."""
        return {}

    def train_step(self, inputs: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """The training step, written once: forward, loss, backward, the method's own modulation,
        then the shared finish (``finish_step``). Returns device tensors."""
        ctx = self.ctx
        output = ctx.model(inputs)
        teachers = ctx.teacher_outputs(inputs) if self.uses_teachers or ctx.smp_acts(epoch) else None
        loss, terms = self.loss(output, inputs, teachers)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        own = self.modulate_gradients(output, inputs, terms)
        return self.finish_step(inputs, epoch, output, loss, terms, own, teachers)

    def finish_step(self, inputs: dict[str, torch.Tensor], epoch: int, output: ModelOutput, loss: torch.Tensor,
                    terms: dict[str, torch.Tensor], own: torch.Tensor | None = None,
                    teachers: TeacherOutputs | None = None) -> dict[str, torch.Tensor]:
        """The tail every step shares once the gradients are in place, however the method computed
        them: SMP's kappa, the update (``update``), then the reported terms (``report``) scoring
        ``predict(output)``. ``own`` is what the method's own modulation applied."""
        smp = self.ctx.smp_coefficients(epoch, inputs, teachers)
        self.update(smp)
        return self.report(inputs, loss, terms, self.predict(output)[0], own, smp)

    def update(self, smp: torch.Tensor | None) -> None:
        """SMP's kappa (when it acts) multiplies each encoder's gradients, then the optimizer steps with
        the method's learning-rate factors, honouring SMP's ``freeze``. A method with several updates
        per batch (MLA) calls it once per update with the batch's kappa."""
        ctx = self.ctx
        if smp is not None:
            ctx.modulator.scale_gradients(smp)
        with scaled_learning_rates(ctx.optimizer, self.learning_rate_factors()):
            ctx.optimizer_step(smp)

    def report(self, inputs: dict[str, torch.Tensor], loss: torch.Tensor, terms: dict[str, torch.Tensor],
               logits: torch.Tensor, own: torch.Tensor | None, smp: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The step's reported terms (``step_terms``), with kappa the product of the method's own
        coefficients and SMP's (``MethodContext.applied_coefficients``)."""
        kappa = self.ctx.applied_coefficients(own, smp, loss.device)
        return step_terms(loss, terms, logits, inputs, self.task, kappa, self.modalities)

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused and per-modality logits for evaluation; the model's own by default."""
        return output.logits, output.modality_logits

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods whose behaviour changes with the epoch (set host state here, not in the step)."""

    def on_epoch_end(self, epoch: int, val: dict) -> None:
        """Hook with the epoch's validation metrics (``evaluate``'s dict, losses included)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, when a run resumes."""


def check_feature_reduction(value: str, method: str) -> None:
    """Refuse a ``method.<name>.feature_reduction`` that Eq. 2's term does not know."""
    if value not in FEATURE_REDUCTIONS:
        raise G2DError(f"config key method.{method}.feature_reduction: {value!r} is not one of "
                       f"{', '.join(FEATURE_REDUCTIONS)}")


# Ranges of numeric hyperparameters: what the value must be, and the test (None, an unset option, passes).
AT_LEAST_0 = ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
ABOVE_0 = ("a finite number > 0", lambda v: math.isfinite(v) and v > 0)
AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
FRACTION = ("in [0, 1]", lambda v: 0 <= v <= 1)


def check_numbers(params: Any, method: str, rules: dict[str, tuple[str, Callable[[float], bool]]]) -> None:
    """Refuse, naming ``method.<name>.<key>``, a hyperparameter outside its range (each entry of a list or
    mapping checked alike), so a run that cannot mean anything stops at preflight, before any teacher trains."""
    for name, (allowed, within) in rules.items():
        value = getattr(params, name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        if not all(item is None or within(item) for item in items):
            raise G2DError(f"config key method.{method}.{name}: must be {allowed}, got {value}")


def parse_params(params_type: type, values: dict[str, Any], prefix: str) -> Any:
    """Check ``values`` (the config's ``method.<name>`` mapping) against ``params_type``."""
    return parse_settings(params_type, values, prefix, "a hyperparameter of this method")


def method_record(cls: type[Method]) -> type[Method]:
    """A method's record is its class, its facts the class attributes above; the paper label is required."""
    if not cls.label:
        raise ValueError(f"method {cls.name!r} has no paper label")
    return cls


# ``@METHODS.register("name")`` on the class: ``method.name=name`` selects it.
METHODS: Registry[type[Method]] = Registry("method", "method.name", method_record)
