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
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from g2d.config import AutoTauConfig, ModulatorKind, Schedule, SMPConfig, Suppression, check_settings
from g2d.core.autotau import AutoTau, modality_score
from g2d.core.balancing import scale_gradients
from g2d.core.losses import teacher_confidence
from g2d.errors import G2DError


def config_key(name: str) -> str:
    """How the CLI names an SMP setting in errors: its key in the config's ``smp`` section."""
    return f"config key smp.{name}"


def argument(name: str) -> str:
    """How the Python API names an SMP setting in errors: the keyword argument of ``SMP``."""
    return f"SMP({name}=...)"


def resolve_tau(tau: list[int] | None, num_modalities: int, epochs: int,
                where: Callable[[str], str] = config_key) -> list[int]:
    """Epochs of each prioritized phase: ``k - 1`` entries; by default half of training, split evenly."""
    phases = num_modalities - 1
    if tau is not None and (isinstance(tau, (str, bool)) or not isinstance(tau, (list, tuple))
                            or not all(isinstance(t, int) and not isinstance(t, bool) for t in tau)):
        raise G2DError(f"{where('tau')}: must be a list of epochs (one per prioritized phase), null or auto, "
                       f"got {tau!r}")
    if tau is None:
        share = max(1, epochs // (2 * phases)) if epochs > 1 else 0
        return [share] * phases
    if len(tau) != phases:
        raise G2DError(
            f"{where('tau')}: needs {phases} entries for {num_modalities} modalities "
            f"(epochs for each prioritized modality before joint training), got {list(tau)}"
        )
    if any(int(t) < 0 for t in tau):
        raise G2DError(f"{where('tau')}: epochs must be >= 0, got {list(tau)}")
    return [int(t) for t in tau]


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


class SMP:
    """Sequential Modality Prioritization (Eq. 6-8), or partial modulation, over a model's encoders.

    In your own loop: ``rank`` once (ranked schedule), ``start_epoch`` each epoch, and ``apply``
    after ``loss.backward()`` and before ``optimizer.step()``. The CLI's engine uses the same
    object through ``coefficients``, ``scale_gradients`` and ``optimizer_step``, which never
    read kappa on the host.
    """

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
        ):
            if value not in allowed:
                raise G2DError(f"{where(key)}: unknown value {value!r} (choose from {', '.join(allowed)})")
        if not isinstance(encoders, Mapping) or len(encoders) < 2:
            raise G2DError(f"{where('encoders')}: SMP needs at least two modalities' encoders, keyed by modality")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise G2DError(f"{where('epochs')}: must be a positive number of epochs, got {epochs!r}")
        self.config = SMPConfig(enabled=True, schedule=schedule, tau=tau, auto=auto or AutoTauConfig(),
                                modulator=modulator, partial_alpha=partial_alpha, suppression=suppression)
        self.task = task
        self.modalities = list(encoders)
        self.auto = AutoTau(self.config.auto, len(encoders) - 1, epochs) if tau == "auto" else None
        self.tau = self.auto.tau if self.auto is not None else resolve_tau(tau, len(encoders), epochs, where)
        self.window = sum(self.tau)
        self.dataset_confidence: torch.Tensor | None = None
        self.epoch: int | None = None
        parameters = [list(e.parameters()) if isinstance(e, nn.Module) else list(e) for e in encoders.values()]
        self.targets: list[list[nn.Parameter]] = [
            [p for p in params if suppression != "conv_grad" or p.dim() == 4] for params in parameters
        ]
        for modality, targets in zip(self.modalities, self.targets):
            if not targets:
                raise G2DError(
                    f"{where('suppression')}: conv_grad modulates only 4-D conv weights, and the encoder of "
                    f"{modality!r} has none (MLP or Transformer); use freeze or zero_grad"
                )

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

    def rank(self, confidences: Mapping[str, float]) -> list[str]:
        """Rank the modalities by their teachers' mean confidence on the training set (Eq. 5; ranked
        schedule and ``tau="auto"``); returns them from least to most confident."""
        if not isinstance(confidences, Mapping) or set(confidences) != set(self.modalities):
            given = ", ".join(map(str, confidences)) if isinstance(confidences, Mapping) else repr(confidences)
            raise G2DError(f"SMP.rank(confidences=...): needs one number per modality ({', '.join(self.modalities)}), "
                           f"got {given}")
        values = [confidences[m] for m in self.modalities]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise G2DError(f"SMP.rank(confidences=...): values must be finite numbers, got {dict(confidences)}")
        self.set_dataset_confidence(torch.tensor(values, dtype=torch.float32))
        return self.ranking()

    def start_epoch(self, epoch: int) -> None:
        """Tell SMP which 0-based epoch the next ``apply`` calls belong to (it picks the phase, Eq. 6)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise G2DError(f"SMP.start_epoch(epoch=...): must be a 0-based epoch number, got {epoch!r}")
        self.epoch = epoch

    def apply(self, teacher_logits: Mapping[str, torch.Tensor] | None = None,
              targets: torch.Tensor | None = None) -> dict[str, float]:
        """Eq. 7-8 on the encoders' gradients, after ``loss.backward()`` and before ``optimizer.step()``.

        Returns kappa per modality. Under ``suppression="freeze"`` a suppressed encoder's gradients
        are set to None, which every torch optimizer skips: no step, no momentum, no weight decay.
        The dynamic schedule (and partial modulation with it) needs this batch's ``teacher_logits``
        (keyed by modality) and ``targets``. Reads kappa on the host once per call.
        """
        if self.epoch is None:
            raise G2DError("SMP.apply(): call smp.start_epoch(epoch) at the start of each epoch first")
        if not self.active(self.epoch):
            return {m: 1.0 for m in self.modalities}
        if self.config.schedule == "dynamic":
            if teacher_logits is None or targets is None:
                raise G2DError("SMP.apply(teacher_logits=..., targets=...): the dynamic schedule ranks each batch by "
                               "its teachers' confidence; pass both")
            missing = [m for m in self.modalities if m not in teacher_logits]
            if missing:
                raise G2DError(f"SMP.apply(teacher_logits=...): no logits for modality {missing[0]!r}")
            stacked = torch.stack([teacher_logits[m].detach() for m in self.modalities])
            batch = teacher_confidence(stacked, targets, self.task)
        else:
            if self.dataset_confidence is None:
                raise G2DError("SMP.rank(confidences=...): the ranked schedule needs the teachers' confidence; "
                               "call smp.rank() before smp.apply()")
            batch = self.dataset_confidence
        kappa = self.coefficients(self.epoch, batch)
        self.scale_gradients(kappa)
        values = kappa.tolist()
        if self.config.suppression == "freeze":
            for params, value in zip(self.targets, values):
                if value == 0:
                    for param in params:
                        param.grad = None
        return dict(zip(self.modalities, values))


class Modulator(SMP):
    """SMP built from a config's ``smp`` section, for the CLI: its errors name config keys."""

    def __init__(self, config: SMPConfig, encoders: Mapping[str, nn.Module | Iterable[nn.Parameter]], epochs: int,
                 task: str = "classification") -> None:
        check_settings(config, "smp")
        super().__init__(encoders=encoders, epochs=epochs, tau=config.tau, schedule=config.schedule,
                         modulator=config.modulator, suppression=config.suppression,
                         partial_alpha=config.partial_alpha, auto=config.auto, task=task,
                         where=lambda name: config_key("enabled" if name == "encoders" else name))
