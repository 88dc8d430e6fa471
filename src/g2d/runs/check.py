"""The preflight check: every unknown name and unsupported combination refused before any work.

``preflight`` reads only the config and the components' records (method, dataset, fusion and its
settings, encoders, optimizer, loggers): no data is loaded, no teacher trained, no folder written, so a typo
or a combination a method refuses costs a second, not a trained teacher. ``g2d train``, ``g2d sweep``
(every grid point and seed, before the first teacher), ``g2d demo`` and ``g2d config`` all go
through it, and ``run`` relies on the ``Checked`` it returns (an API caller's ``run(config)`` checks the
config here, once). ``check_data`` is its second half, for what only the loaded data can tell (how many
modalities and classes it holds), made once the data is loaded and still before anything is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from g2d.config import ExperimentConfig, check_ranges, checked_config
from g2d.core.autotau import check_auto, phase_cap
from g2d.core.optimizers import OPTIMIZERS
from g2d.core.smp import check_phases, check_tau_list, resolve_tau
from g2d.data import DATASETS, MultimodalData, dataset_options
from g2d.errors import G2DError
from g2d.methods import METHODS, Method, check_task, method_params
from g2d.models.encoders import ENCODERS
from g2d.models.fusion import fusion_settings
from g2d.training.distributed import check_data_parallel
from g2d.training.tracking import check_loggers, check_wandb_mode
from g2d.training.threads import choose_threads


@dataclass(frozen=True)
class Checked:
    """A config that passed ``preflight``, with what the check worked out, so that ``run`` relies on it
    instead of checking again. A config changed after its check must be checked again."""

    config: ExperimentConfig
    method: type[Method]
    params: Any  # the method's hyperparameters, parsed from method.<name>
    smp: bool  # whether SMP is on (smp.enabled, or the method's default)


def preflight(config: ExperimentConfig, caller: str = "preflight") -> Checked:
    """Refuse, with one line naming the config key, what the records say cannot run (see the module doc);
    values set in code are checked as a YAML file's (``checked_config``, which names ``caller``)."""
    config = checked_config(config, caller)
    check_ranges(config)
    choose_threads(config.trainer.threads)
    dataset = DATASETS.lookup(config.dataset.name)
    dataset_options(config.dataset)
    fusion_settings(config.model.fusion, config.model.fusion_settings)
    ENCODERS.lookup(config.model.encoder.name, "model.encoder.name")
    for modality, encoder in config.model.encoders.items():
        ENCODERS.lookup(encoder.name, f"model.encoders.{modality}.name")
    OPTIMIZERS.lookup(config.optim.name)
    method, params = method_params(config.method)
    if dataset.task is not None:
        check_task(method, dataset.task)
    check_smp(config, method)
    if config.dataset.modalities:
        check_modality_count(config, method, config.dataset.modalities, "dataset.modalities")
    if smp_enabled(config, method):
        modalities = config.dataset.modalities
        check_smp_settings(config, len(modalities) if modalities else None)
    check_data_parallel(method, params)
    check_tracking(config)
    return Checked(config, method, params, smp_enabled(config, method))


def smp_enabled(config: ExperimentConfig, method: type[Method]) -> bool:
    """``smp.enabled``, or the method's default when the config leaves it null."""
    return method.smp_by_default if config.smp.enabled is None else bool(config.smp.enabled)


def check_smp(config: ExperimentConfig, method: type[Method]) -> None:
    """A method whose record refuses SMP does not train with it on. Its other ``smp.*`` settings stay
    inert, as for any method with SMP off, so a config written for several methods keeps working."""
    if method.accepts_smp is not True and smp_enabled(config, method):
        raise G2DError(f"config key smp.enabled: {method.name} does not combine with SMP: {method.accepts_smp}")


def check_tracking(config: ExperimentConfig) -> None:
    """Loggers that are unknown or not installed, and a W&B mode W&B does not know."""
    check_loggers(config)
    check_wandb_mode(config)


def check_modality_count(config: ExperimentConfig, method: type[Method], modalities: list[str], key: str) -> None:
    """SMP modulates between modalities: with one it has nothing to rank (refused before its teacher trains)."""
    if len(modalities) < 2 and smp_enabled(config, method):
        raise G2DError(f"config key {key}: SMP needs at least two modalities, the run has one ({', '.join(modalities)}); "
                       f"add a modality or set smp.enabled=false (method {method.name})")


def data_key(config: ExperimentConfig) -> str:
    """The config key that chose the data: the factory of a python dataset, else the dataset's folder or name."""
    if config.dataset.name == "python":
        return "dataset.factory"
    return "dataset.root" if config.dataset.root else "dataset.name"


def check_data(config: ExperimentConfig, data: MultimodalData) -> None:
    """What only the loaded data (``dataset.modalities`` applied) can refuse: one modality where SMP needs
    two, one class where classification needs two."""
    method = METHODS.lookup(config.method_name)
    check_modality_count(config, method, list(data.modalities), data_key(config))
    if data.task == "classification":
        classes = torch.unique(torch.as_tensor(data.splits["train"]["label"])).tolist()
        if len(classes) < 2:
            raise G2DError(f"config key {data_key(config)}: the training split of dataset {data.name} holds one class "
                           f"({classes[0]}); classification needs at least two (a regression gives items a 'target')")


def check_smp_settings(config: ExperimentConfig, num_modalities: int | None) -> None:
    """SMP's numbers, checked like the method's: ``smp.partial_alpha`` finite and >= 0, and phases that leave
    no modality without an epoch to train (``g2d.core.smp.check_phases``). What depends on the number of
    modalities (the default tau, ``tau: auto``'s longest phases) waits for it when the config does not list
    them: ``g2d.runs.sanity.check_smp_window`` checks it once the data is loaded, before any teacher trains."""
    smp, epochs = config.smp, config.trainer.epochs
    if not (math.isfinite(smp.partial_alpha) and smp.partial_alpha >= 0):
        raise G2DError(f"config key smp.partial_alpha: must be a finite number >= 0, got {smp.partial_alpha}")
    if smp.tau == "auto":
        if num_modalities is not None:
            check_auto(smp.auto, num_modalities - 1, epochs)
            check_phases("auto", phase_cap(smp.auto, num_modalities - 1, epochs) * (num_modalities - 1), epochs,
                         smp.schedule, smp.modulator)
        return
    check_tau_list(smp.tau)
    tau = list(smp.tau) if smp.tau is not None else None
    if tau is None and num_modalities is None:
        return
    if num_modalities is not None:
        tau = resolve_tau(tau, num_modalities, epochs)
    assert tau is not None
    shown = f"{tau} (smp.tau: null, the default)" if smp.tau is None else tau
    check_phases(shown, sum(tau), epochs, smp.schedule, smp.modulator)
