"""Sequential Modality Prioritization (SMP, Eq. 6-8) and partial (OGM-style) modulation.

Any method can be given this modulator. Each step it yields a coefficient per modality,
kappa (a device tensor, never read on the host), which scales that modality's encoder
gradients; with ``suppression: freeze`` a zero coefficient also keeps the optimizer from
moving the encoder at all (no momentum, no weight decay), as Eq. 8 reads.

Schedules (both follow Eq. 6: the j-th weakest modality alone for tau_j epochs, j < k,
then all modalities together):
- ``ranked``: modalities ranked once, by the teachers' mean confidence over the training set.
- ``dynamic``: ranked anew on every batch from that batch's teacher confidence (Eq. 5); for
  k = 2 this is the authors' code, which zeroes the more confident modality per batch while
  ``epoch <= modulation_ends``: epochs 0-150 for their 150, i.e. ``tau = [151]`` here
  (``tau = [150]``, the paper's 150 epochs, covers epochs 0-149).

``tau: auto`` ends each prioritized phase by a rule on the validation split instead of a
fixed length (``g2d.core.autotau``): the engine calls ``end_epoch`` after each epoch's
validation, and ``tau`` and ``window`` follow the phases chosen so far.

Ties: modalities with equal confidence share the ranks they span, so each of them trains in
every phase any of those ranks owns (the authors' code raises an error instead).

Modulators: ``complete`` gives kappa in {0, 1} as above; ``partial`` keeps every modality
training and scales the gradients of each modality m more confident than the weakest by
``1 - tanh(partial_alpha * rho_m / rho_min)`` (OGM-GE's coefficient, Table 6) during the
same window as the prioritized phases.

Suppression, i.e. what kappa touches: ``freeze`` (all encoder parameters, and a zero
coefficient leaves parameters and optimizer state bit-identical), ``zero_grad`` (all encoder
gradients scaled; momentum and weight decay still move the encoder) or ``conv_grad`` (only
4-D convolution weight gradients, as the authors' and OGM-GE's codes do). Under every
mode a suppressed encoder still runs forward in training mode, so its BatchNorm running
statistics keep tracking the data; Eq. 8 concerns its parameters, which ``freeze`` holds still.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from g2d.config import AutoTauConfig, ModulatorKind, Schedule, SMPConfig, Suppression, check_settings
from g2d.core.autotau import AutoTau, modality_score
from g2d.core.balancing import scale_gradients
from g2d.core.losses import TASKS, teacher_confidence
from g2d.errors import G2DError


def config_key(name: str) -> str:
    """How the CLI names an SMP setting in errors: its key in the config's ``smp`` section."""
    return f"config key smp.{name}"


def argument(name: str) -> str:
    """How the Python API names an SMP setting in errors: the keyword argument of ``SMP``."""
    return f"SMP({name}=...)"


def check_tau_list(tau: Any, where: Callable[[str], str] = config_key) -> None:
    """``tau`` is a list of non-negative whole epochs (or null); anything else names the setting."""
    if tau is not None and (isinstance(tau, (str, bool)) or not isinstance(tau, (list, tuple))
                            or not all(isinstance(t, int) and not isinstance(t, bool) for t in tau)):
        raise G2DError(f"{where('tau')}: must be a list of epochs (one per prioritized phase), null or auto, "
                       f"got {tau!r}")
    if tau is not None and any(int(t) < 0 for t in tau):
        raise G2DError(f"{where('tau')}: epochs must be >= 0, got {list(tau)}")


def resolve_tau(tau: list[int] | None, num_modalities: int, epochs: int,
                where: Callable[[str], str] = config_key) -> list[int]:
    """Epochs of each prioritized phase: ``k - 1`` entries; by default half of training, split evenly, at
    least one epoch each while that leaves the last modality an epoch (else as many as leave it one)."""
    phases = num_modalities - 1
    check_tau_list(tau, where)
    if tau is None:
        share = max(1, epochs // (2 * phases)) if epochs > 1 else 0
        if share * phases >= epochs:
            share = max(0, epochs - 1) // phases
        return [share] * phases
    if len(tau) != phases:
        raise G2DError(
            f"{where('tau')}: needs {phases} entries for {num_modalities} modalities "
            f"(epochs for each prioritized modality before joint training), got {list(tau)}"
        )
    return [int(t) for t in tau]


def check_phases(tau: list[int] | str, phases_end: int, epochs: int, schedule: str, modulator: str,
                 where: Callable[[str], str] = config_key) -> None:
    """Refuse phases that leave a modality no epoch to train: under the ranked schedule with the complete
    modulator the most confident modality trains only once every prioritized phase is over, so phases
    that may last until ``epochs`` (``phases_end``: the epoch they end by at the latest) would keep it
    from ever training. The dynamic schedule ranks each batch anew and ``partial`` trains every modality."""
    if schedule == "ranked" and modulator == "complete" and phases_end >= epochs:
        at_most = " at most" if tau == "auto" else ""
        raise G2DError(f"{where('tau')}: phases {tau} take {phases_end} epochs{at_most} and training has {epochs}: the "
                       f"most confident modality trains only after the phases, so it would never train; make them "
                       f"shorter than training")


def phase_of(epoch: int, tau: list[int]) -> int:
    """The SMP phase of a 0-based epoch: ``j`` while the j-th weakest leads, ``len(tau)`` when all train."""
    boundary = 0
    for index, length in enumerate(tau):
        boundary += length
        if epoch < boundary:
            return index
    return len(tau)


def priority_mask(confidence: torch.Tensor, phase: int) -> torch.Tensor:
    """Eq. 7: 1 for the modality ranked ``phase`` (0 = least confident), else 0; all ones once joint.

    Vectorized with no host synchronization. A modality's ranks span from the number of
    strictly less confident modalities to that plus its ties, minus one.
    """
    k = confidence.shape[0]
    if phase >= k - 1:
        return torch.ones_like(confidence)
    lower = (confidence.unsqueeze(0) < confidence.unsqueeze(1)).sum(dim=1)
    equal = (confidence.unsqueeze(0) == confidence.unsqueeze(1)).sum(dim=1)
    first_rank, last_rank = lower, lower + equal - 1
    return ((first_rank <= phase) & (phase <= last_rank)).to(confidence.dtype)


def partial_coefficients(confidence: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM-GE's ``1 - tanh(alpha * rho_m / rho_min)`` for modalities above the weakest; 1 for the weakest."""
    ratio = confidence / confidence.min().clamp_min(1e-12)
    return torch.where(ratio > 1.0, 1.0 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


def encoder_parameters(encoders: Any, where: Callable[[str], str]) -> dict[str, list[nn.Parameter]]:
    """Each modality's encoder parameters from a mapping (``dict``, ``nn.ModuleDict``) of modules or of
    parameter lists; an encoder given under two names (or sharing a parameter with another) is refused,
    since SMP could then freeze and train it in the same step."""
    if not isinstance(encoders, (Mapping, nn.ModuleDict)) or len(encoders) < 2:
        given = f"{len(encoders)} encoder(s)" if isinstance(encoders, (Mapping, nn.ModuleDict)) else \
            f"a {type(encoders).__name__}"
        raise G2DError(f"{where('encoders')}: SMP needs a mapping of at least two modalities' encoders "
                       f"(dict or nn.ModuleDict, keyed by modality), got {given}")
    parameters: dict[str, list[nn.Parameter]] = {}
    owner: dict[int, str] = {}
    for modality, encoder in encoders.items():
        if not isinstance(modality, str):
            raise G2DError(f"{where('encoders')}: keys must be modality names (str), got {modality!r}")
        if isinstance(encoder, nn.Module):
            params = list(encoder.parameters())
        elif isinstance(encoder, Iterable) and not isinstance(encoder, (str, torch.Tensor)):
            params = list(encoder)
        else:
            params = None
        if params is None or not all(isinstance(p, torch.Tensor) for p in params):
            raise G2DError(f"{where('encoders')}: the encoder of {modality!r} must be an nn.Module or a list of its "
                           f"parameters, got {type(encoder).__name__}")
        for param in params:
            other = owner.setdefault(id(param), modality)
            if other != modality:
                raise G2DError(f"{where('encoders')}: {other!r} and {modality!r} share parameters (the same encoder "
                               f"under two names?); give each modality its own encoder")
        parameters[modality] = params
    return parameters


class SMP:
    """Sequential Modality Prioritization (Eq. 6-8), or partial modulation, over a model's encoders.

    In your own loop: ``rank`` once (ranked schedule), ``start_epoch`` each epoch, and ``apply``
    after the step's last ``backward()`` and before ``optimizer.step()``. The CLI's engine uses the
    same object through ``coefficients``, ``scale_gradients`` and ``optimizer_step``, which never
    read kappa on the host unless ``host_freeze`` is set.
    """

    # How ``optimizer_step`` holds a frozen encoder still: False selects its parameters and optimizer
    # state back with ``torch.where`` (no host read, so the step can be captured in a CUDA graph);
    # True reads kappa on the host and leaves the frozen encoders out of the step, which is free on the
    # CPU and saves copying every encoder twice a step. Both give the same weights and updates.
    host_freeze = False

    # ``tau="auto"`` ends phases on g2d's own validation metrics (``end_epoch``), which only the CLI's
    # engine computes: the CLI's ``Modulator`` accepts it, the public ``SMP`` refuses it.
    accepts_auto_tau = False

    def __init__(
        self,
        *,
        encoders: Mapping[str, nn.Module | Iterable[nn.Parameter]],
        epochs: int,
        tau: list[int] | str | None = None,
        schedule: str = "ranked",
        modulator: str = "complete",
        suppression: str = "freeze",
        partial_alpha: float = 1.0,
        auto: AutoTauConfig | None = None,
        task: str = "classification",
        where: Callable[[str], str] = argument,
    ) -> None:
        for key, value, allowed in (
            ("schedule", schedule, [c.value for c in Schedule]),
            ("modulator", modulator, [c.value for c in ModulatorKind]),
            ("suppression", suppression, [c.value for c in Suppression]),
            ("task", task, list(TASKS)),
        ):
            if value not in allowed:
                raise G2DError(f"{where(key)}: unknown value {value!r} (choose from {', '.join(allowed)})")
        parameters = encoder_parameters(encoders, where)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise G2DError(f"{where('epochs')}: must be a positive number of epochs, got {epochs!r}")
        if (isinstance(partial_alpha, bool) or not isinstance(partial_alpha, numbers.Real)
                or not math.isfinite(partial_alpha) or partial_alpha < 0):
            raise G2DError(f"{where('partial_alpha')}: must be a finite number >= 0, got {partial_alpha!r}")
        auto_tau = isinstance(tau, str) and tau == "auto"
        if auto_tau and not self.accepts_auto_tau:
            raise G2DError(f"{where('tau')}: 'auto' ends each phase on g2d's own validation metrics, which only the "
                           f"CLI computes (g2d train with smp.tau=auto, docs/smp.md); give a list of epochs here")
        self.config = SMPConfig(enabled=True, schedule=schedule, tau=tau, auto=auto or AutoTauConfig(),
                                modulator=modulator, partial_alpha=partial_alpha, suppression=suppression)
        self.task = task
        self.modalities = list(parameters)
        self.auto = AutoTau(self.config.auto, len(parameters) - 1, epochs) if auto_tau else None
        self.tau = self.auto.tau if self.auto is not None else resolve_tau(tau, len(parameters), epochs, where)
        phases_end = self.auto.cap * self.auto.phases if self.auto is not None else sum(self.tau)
        check_phases("auto" if auto_tau else self.tau, phases_end, epochs, schedule, modulator, where)
        self.window = sum(self.tau)
        self.dataset_confidence: torch.Tensor | None = None
        self.epoch: int | None = None
        self.targets: list[list[nn.Parameter]] = [
            [p for p in params if suppression != "conv_grad" or p.dim() == 4] for params in parameters.values()
        ]
        for modality, targets in zip(self.modalities, self.targets):
            if not targets:
                raise G2DError(
                    f"{where('suppression')}: conv_grad modulates only 4-D conv weights, and the encoder of "
                    f"{modality!r} has none (MLP or Transformer); use freeze or zero_grad"
                )
        # ``apply``'s bookkeeping, so kappa reaches each gradient once per optimizer step (see ``apply``).
        self.holding: dict[int, tuple[int, int]] = {}
        self.step_hook: Any = None

    @property
    def needs_dataset_confidence(self) -> bool:
        """The ranked schedule ranks by it; ``tau: auto`` picks each phase's modality by it."""
        return self.config.schedule == "ranked" or self.auto is not None

    def end_epoch(self, epoch: int, val: dict, task: str) -> None:
        """After ``epoch``'s validation: under ``tau: auto``, let the running phase's modality decide
        whether the phase ends; ``tau`` and ``window`` then cover the next epoch."""
        if self.auto is None or self.auto.phase >= len(self.modalities) - 1:
            return
        modality = self.ranking()[self.auto.phase]
        self.auto.observe(epoch, modality_score(val, modality, task))
        self.tau = self.auto.tau
        self.window = sum(self.tau)

    def state_dict(self) -> dict:
        """Host state that changes during training (only under ``tau: auto``), for checkpoints."""
        return {"auto": self.auto.state_dict()} if self.auto is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s state on resume, so the phases end where the interrupted run's would."""
        if self.auto is not None and "auto" in state:
            self.auto.load_state_dict(state["auto"])
            self.tau = self.auto.tau
            self.window = sum(self.tau)

    def auto_report(self, epochs_trained: int) -> dict:
        """For metrics.json under ``tau: auto``: each phase's modality, first epoch, length and why it
        ended (``plateau``, ``max_share``, or ``training ended`` when the run stopped inside it)."""
        assert self.auto is not None
        phases, start = [], 0
        for index, modality in enumerate(self.ranking()[: len(self.modalities) - 1]):
            if start >= epochs_trained:
                break
            ended = index < len(self.auto.chosen)
            length = self.auto.chosen[index] if ended else min(self.auto.cap, epochs_trained - start)
            phases.append({"modality": modality, "start": start, "epochs": length,
                           "ended_by": self.auto.ended_by[index] if ended else "training ended"})
            start += length
        return {"tau_chosen": [phase["epochs"] for phase in phases], "phases": phases,
                "patience_epochs": self.auto.patience, "max_epochs_per_phase": self.auto.cap}

    def set_dataset_confidence(self, confidence: torch.Tensor) -> None:
        """Teachers' mean confidence over the training set, for the ranked schedule."""
        self.dataset_confidence = confidence

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` lies in the modulation window (a host-side decision on the epoch alone)."""
        return epoch < self.window

    def ranking(self) -> list[str]:
        """Modalities from least to most confident over the training set (ranked schedule only)."""
        assert self.dataset_confidence is not None
        order = torch.argsort(self.dataset_confidence.cpu(), stable=True).tolist()
        return [self.modalities[i] for i in order]

    def coefficients(self, epoch: int, batch_confidence: torch.Tensor) -> torch.Tensor:
        """kappa for this step, ``[k]`` on the confidence's device."""
        confidence = batch_confidence
        if self.config.schedule == "ranked":
            assert self.dataset_confidence is not None, "ranked SMP needs set_dataset_confidence() first"
            confidence = self.dataset_confidence.to(batch_confidence.device)
        if self.config.modulator == "partial":
            return partial_coefficients(confidence, self.config.partial_alpha)
        return priority_mask(confidence, phase_of(epoch, self.tau))

    def scale_gradients(self, kappa: torch.Tensor) -> None:
        """Multiply each targeted encoder gradient by its modality's coefficient, on the device."""
        scale_gradients(self.targets, kappa)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, kappa: torch.Tensor) -> None:
        """``optimizer.step()``; under ``freeze``, encoders with kappa == 0 keep parameters and state.

        Optimizer state that does not exist yet counts as zeros, which is what SGD's momentum
        and Adam's moments start from. Selection uses ``torch.where``, so nothing syncs.
        """
        if self.config.suppression != "freeze":
            optimizer.step()
            return
        if self.host_freeze:
            self.step_without_frozen(optimizer, kappa)
            return
        saved = []
        for index, params in enumerate(self.targets):
            for param in params:
                state = {name: value.clone() for name, value in optimizer.state.get(param, {}).items() if torch.is_tensor(value)}
                saved.append((index, param, param.detach().clone(), state))
        optimizer.step()
        frozen = kappa == 0
        with torch.no_grad():
            for index, param, old_value, old_state in saved:
                keep = frozen[index]
                param.copy_(torch.where(keep, old_value, param))
                for name, value in optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value):
                        previous = old_state.get(name)
                        if previous is None:
                            previous = torch.zeros_like(value)
                        value.copy_(torch.where(keep, previous, value))

    def step_without_frozen(self, optimizer: torch.optim.Optimizer, kappa: torch.Tensor) -> None:
        """``optimizer.step()`` with the gradients of encoders whose kappa is 0 set aside: every torch
        optimizer skips a parameter without a gradient (no update, no momentum, no weight decay, no
        state created), which is what ``torch.where`` restores. The gradients are put back after."""
        aside = [(param, param.grad) for value, params in zip(kappa.tolist(), self.targets) if value == 0
                 for param in params]
        for param, _ in aside:
            param.grad = None
        try:
            optimizer.step()
        finally:
            for param, grad in aside:
                param.grad = grad

    def rank(self, confidences: Mapping[str, float | torch.Tensor]) -> list[str]:
        """Rank the modalities by their teachers' mean confidence on the training set (Eq. 5; ranked
        schedule); returns them from least to most confident. Values: numbers or 0-dim tensors."""
        if not isinstance(confidences, Mapping) or set(confidences) != set(self.modalities):
            given = ", ".join(map(str, confidences)) if isinstance(confidences, Mapping) else repr(confidences)
            raise G2DError(f"SMP.rank(confidences=...): needs one number per modality ({', '.join(self.modalities)}), "
                           f"got {given}")
        values = []
        for modality in self.modalities:
            value = confidences[modality]
            if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise G2DError(f"SMP.rank(confidences=...): the value for {modality!r} must be a finite number or a "
                               f"0-dim tensor, got {value!r}")
            values.append(float(value))
        self.set_dataset_confidence(torch.tensor(values, dtype=torch.float32))
        return self.ranking()

    def start_epoch(self, epoch: int) -> None:
        """Tell SMP which 0-based epoch the next ``apply`` calls belong to (it picks the phase, Eq. 6)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise G2DError(f"SMP.start_epoch(epoch=...): must be a 0-based epoch number, got {epoch!r}")
        self.epoch = epoch

    def apply(self, teacher_logits: Mapping[str, torch.Tensor] | None = None,
              targets: torch.Tensor | None = None) -> dict[str, float]:
        """Eq. 7-8 on the encoders' gradients, after the step's last ``backward()`` and before ``optimizer.step()``.

        Returns kappa per modality. Under ``suppression="freeze"`` a suppressed encoder's gradients
        are set to None, which every torch optimizer skips: no step, no momentum, no weight decay.
        The dynamic schedule (and partial modulation with it) needs this batch's ``teacher_logits``
        (keyed by modality) and ``targets``; under an initialized ``torch.distributed`` process group
        it ranks on the global batch (an all-reduce), so every replica suppresses the same encoders.

        kappa reaches each gradient once per optimizer step: a gradient that already holds it (a second
        call before the step, or a second optimizer's hook) is left as it is; one that another
        ``backward()`` added to before any optimizer stepped is refused, since scaling it again would
        compound kappa (with gradient accumulation, call ``apply`` once, after the last backward).
        Reads kappa on the host once per call.
        """
        if self.epoch is None:
            raise G2DError("SMP.apply(): call smp.start_epoch(epoch) at the start of each epoch first")
        if not self.active(self.epoch):
            return {m: 1.0 for m in self.modalities}
        if self.config.schedule == "dynamic":
            batch = self.batch_confidence(teacher_logits, targets)
        else:
            if self.dataset_confidence is None:
                raise G2DError("SMP.rank(confidences=...): the ranked schedule needs the teachers' confidence; "
                               "call smp.rank() before smp.apply()")
            batch = self.dataset_confidence
        kappa = self.coefficients(self.epoch, batch)
        self.watch_optimizer_steps()
        due = [[p for p in params if self.needs_kappa(p, modality)] for modality, params in zip(self.modalities,
                                                                                              self.targets)]
        scale_gradients(due, kappa)
        values = kappa.tolist()
        for params, value in zip(due, values):
            for param in params:
                if self.config.suppression == "freeze" and value == 0:
                    param.grad = None
                    self.holding.pop(id(param), None)
                else:
                    self.holding[id(param)] = (weakref.ref(param.grad), param.grad._version, False)
        return dict(zip(self.modalities, values))

    def needs_kappa(self, param: nn.Parameter, modality: str) -> bool:
        """Whether ``param``'s gradient is still to be scaled for the coming optimizer step (see ``apply``)."""
        if param.grad is None:
            return False
        held = self.holding.get(id(param))
        if held is None:
            return True
        grad, version, stepped = held
        if grad() is param.grad and version == param.grad._version:
            return False
        if not stepped:
            raise G2DError(
                f"SMP.apply(): the gradients of {modality!r}'s encoder already hold kappa from the previous apply() "
                "and another backward() added to them before any optimizer step; scaling again would compound "
                "kappa. With gradient accumulation call smp.apply() once per optimizer step, after the last backward()"
            )
        return True

    def watch_optimizer_steps(self) -> None:
        """Have every torch optimizer's step mark the gradients it used as spent (a global post-step hook,
        registered on the first ``apply`` only, so the CLI's engine, which never calls it, has none)."""
        if self.step_hook is not None:
            return
        this = weakref.ref(self)

        def stepped(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            smp = this()
            if smp is None or not smp.holding:
                return
            for group in optimizer.param_groups:
                for param in group["params"]:
                    held = smp.holding.get(id(param))
                    if held is not None:
                        smp.holding[id(param)] = (held[0], held[1], True)

        self.step_hook = register_optimizer_step_post_hook(stepped)
        weakref.finalize(self, self.step_hook.remove)

    def batch_confidence(self, teacher_logits: Any, targets: Any) -> torch.Tensor:
        """Eq. 5 on this batch for the dynamic schedule; the mean over every process's batch under torch.distributed."""
        if teacher_logits is None or targets is None:
            raise G2DError("SMP.apply(teacher_logits=..., targets=...): the dynamic schedule ranks each batch by "
                           "its teachers' confidence; pass both")
        if not isinstance(teacher_logits, Mapping):
            raise G2DError(f"SMP.apply(teacher_logits=...): must be a dict of logits keyed by modality, got "
                           f"{type(teacher_logits).__name__}")
        missing = [m for m in self.modalities if m not in teacher_logits]
        stray = [m for m in teacher_logits if m not in self.modalities]
        if missing or stray:
            raise G2DError(f"SMP.apply(teacher_logits=...): needs exactly the modalities {', '.join(self.modalities)}; "
                           + (f"no logits for {missing[0]!r}" if missing else f"{stray[0]!r} is not one of them"))
        if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
            raise G2DError(f"SMP.apply(targets=...): must be a 1-D tensor of the batch's targets, got "
                           f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
        expected = None
        for modality in self.modalities:
            logits = teacher_logits[modality]
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
            if shape is None or len(shape) != 2 or shape[0] != len(targets) or (expected and shape != expected):
                raise G2DError(f"SMP.apply(teacher_logits=...): {modality!r} must be a [B, C] tensor with B = "
                               f"{len(targets)} targets{f' and the shape {expected} of the others' if expected else ''}, "
                               f"got {shape if shape is not None else type(logits).__name__}")
            expected = shape
        assert expected is not None
        if self.task == "classification" and (targets.is_floating_point() or targets.is_complex()
                                              or not bool(((targets >= 0) & (targets < expected[1])).all())):
            raise G2DError(f"SMP.apply(targets=...): must be integer classes in [0, {expected[1]}), got "
                           f"{targets.dtype} {targets.min().item()}..{targets.max().item()}")
        stacked = torch.stack([teacher_logits[m].detach() for m in self.modalities])
        confidence = teacher_confidence(stacked, targets, self.task)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rows = torch.full((1,), float(len(targets)), dtype=confidence.dtype, device=confidence.device)
            total = torch.cat([confidence * rows, rows])
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            confidence = total[:-1] / total[-1]
        return confidence


class Modulator(SMP):
    """SMP built from a config's ``smp`` section, for the CLI: its errors name config keys."""

    accepts_auto_tau = True

    def __init__(self, config: SMPConfig, encoders: Mapping[str, nn.Module | Iterable[nn.Parameter]], epochs: int,
                 task: str = "classification") -> None:
        check_settings(config, "smp")
        super().__init__(encoders=encoders, epochs=epochs, tau=config.tau, schedule=config.schedule,
                         modulator=config.modulator, suppression=config.suppression,
                         partial_alpha=config.partial_alpha, auto=config.auto, task=task,
                         where=lambda name: config_key("enabled" if name == "encoders" else name))
