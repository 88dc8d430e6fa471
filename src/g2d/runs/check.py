"""The preflight check: every unknown name and unsupported combination refused before any work.

``preflight`` reads only the config and the components' records (method, dataset, fusion,
encoders, optimizer): no data is loaded, no teacher trained, no folder written, so a typo or a
combination a method refuses costs a second, not a trained teacher. ``g2d train``, ``g2d sweep``
(every grid point and seed, before the first teacher) and ``g2d demo`` all go through it.
"""

from __future__ import annotations

import math

from g2d.config import ExperimentConfig, check_ranges
from g2d.core.autotau import check_auto, phase_cap
from g2d.core.smp import check_phases, check_tau_list, resolve_tau
from g2d.data import DATASETS, dataset_options
from g2d.errors import G2DError
from g2d.methods import Method, check_task, method_params
from g2d.models.encoders import ENCODERS
from g2d.models.fusion import FUSIONS
from g2d.training.distributed import check_data_parallel
from g2d.training.engine import OPTIMIZERS


def preflight(config: ExperimentConfig) -> None:
    """Refuse, with one line naming the config key, what the records say cannot run (see the module doc)."""
    check_ranges(config)
    dataset = DATASETS.lookup(config.dataset.name)
    dataset_options(config.dataset)
    FUSIONS.lookup(config.model.fusion)
    ENCODERS.lookup(config.model.encoder.name, "model.encoder.name")
    for modality, encoder in config.model.encoders.items():
        ENCODERS.lookup(encoder.name, f"model.encoders.{modality}.name")
    OPTIMIZERS.lookup(config.optim.name)
    method, params = method_params(config.method)
    if dataset.task is not None:
        check_task(method, dataset.task)
    check_smp(config, method)
    if smp_enabled(config, method):
        modalities = config.dataset.modalities
        check_smp_settings(config, len(modalities) if modalities else None)
    check_data_parallel(method, params)


def smp_enabled(config: ExperimentConfig, method: type[Method]) -> bool:
    """``smp.enabled``, or the method's default when the config leaves it null."""
    return method.smp_by_default if config.smp.enabled is None else bool(config.smp.enabled)


def check_smp(config: ExperimentConfig, method: type[Method]) -> None:
    """A method whose record refuses SMP does not train with it on. Its other ``smp.*`` settings stay
    inert, as for any method with SMP off, so a config written for several methods keeps working."""
    if method.accepts_smp is not True and smp_enabled(config, method):
        raise G2DError(f"config key smp.enabled: {method.name} does not combine with SMP: {method.accepts_smp}")


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
