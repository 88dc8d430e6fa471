"""The preflight check: every unknown name and unsupported combination refused before any work.

``preflight`` reads only the config and the components' records (method, dataset, fusion,
encoders, optimizer): no data is loaded, no teacher trained, no folder written, so a typo or a
combination a method refuses costs a second, not a trained teacher. ``g2d train``, ``g2d sweep``
(every grid point and seed, before the first teacher) and ``g2d demo`` all go through it.
"""

from __future__ import annotations

from g2d.config import ExperimentConfig, check_ranges
from g2d.data import DATASETS, dataset_options
from g2d.errors import G2DError
from g2d.methods import Method, check_task, method_params
from g2d.models.encoders import ENCODERS
from g2d.models.fusion import FUSIONS
from g2d.training.distributed import check_data_parallel
from g2d.training.engine import OPTIMIZERS
from g2d.training.threads import choose_threads


def preflight(config: ExperimentConfig) -> None:
    """Refuse, with one line naming the config key, what the records say cannot run (see the module doc)."""
    check_ranges(config)
    choose_threads(config.trainer.threads)
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
    check_data_parallel(method, params)


def smp_enabled(config: ExperimentConfig, method: type[Method]) -> bool:
    """``smp.enabled``, or the method's default when the config leaves it null."""
    return method.smp_by_default if config.smp.enabled is None else bool(config.smp.enabled)


def check_smp(config: ExperimentConfig, method: type[Method]) -> None:
    """A method whose record refuses SMP does not train with it on. Its other ``smp.*`` settings stay
    inert, as for any method with SMP off, so a config written for several methods keeps working."""
    if method.accepts_smp is not True and smp_enabled(config, method):
        raise G2DError(f"config key smp.enabled: {method.name} does not combine with SMP: {method.accepts_smp}")
