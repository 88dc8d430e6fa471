"""Checks of a config against its data, made before anything is trained or written.

Each turns a setting that would be silently ignored or would silently cripple a run into a
refusal naming the key, or, where a run is still meaningful (a short smoke run), a visible warning.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from g2d.config import ExperimentConfig, SMPConfig, flatten
from g2d.data.base import MultimodalData
from g2d.errors import G2DError
from g2d.core.smp import resolve_tau
from g2d.runs.check import check_smp_settings

logger = logging.getLogger("g2d")


def check_encoders(config: ExperimentConfig, data: MultimodalData) -> None:
    """``model.encoders.<m>`` for a modality the dataset does not have is a typo, not a no-op."""
    for name in config.model.encoders:
        if name not in data.modalities:
            raise G2DError(f"config key model.encoders.{name}: dataset {data.name} has no modality {name!r} "
                           f"(modalities: {', '.join(data.modalities)})")


def warn_unseen_classes(data: MultimodalData) -> None:
    """A class that validation or test holds but training never shows cannot be predicted: say so."""
    if data.task != "classification":
        return
    trained = set(torch.unique(torch.as_tensor(data.splits["train"]["label"])).tolist())
    for split in ("val", "test"):
        if split not in data.splits:
            continue
        unseen = sorted(set(torch.unique(torch.as_tensor(data.splits[split]["label"])).tolist()) - trained)
        if unseen:
            names = [data.class_names[c] if c < len(data.class_names) else str(c) for c in unseen]
            logger.warning("warning: dataset %s: class(es) %s appear in the %s split but never in training, "
                           "so the model cannot predict them", data.name, ", ".join(names), split)


def check_smp_window(config: ExperimentConfig, num_modalities: int) -> None:
    """SMP's settings for this many modalities (``g2d.runs.check.check_smp_settings``: phases that leave a
    modality no epoch to train are refused). Phases as long as training under the dynamic schedule or
    partial modulation still train every modality, but never jointly: a warning."""
    check_smp_settings(config, num_modalities)
    if config.smp.tau == "auto":
        return
    tau = resolve_tau(config.smp.tau, num_modalities, config.trainer.epochs)
    if sum(tau) >= config.trainer.epochs:
        logger.warning("warning: smp.tau %s adds up to %d epochs, at least trainer.epochs=%d: no epoch trains the "
                       "modalities jointly", tau, sum(tau), config.trainer.epochs)


def warn_unused_smp_settings(config: ExperimentConfig, smp_enabled: bool) -> None:
    """SMP settings changed from their defaults that this run ignores (SMP off, or ``smp.auto.*``
    without ``smp.tau=auto``) are a visible warning: the user believes they shape the run."""
    chosen, default = (flatten({"smp": dataclasses.asdict(smp)}) for smp in (config.smp, SMPConfig()))
    keys = sorted(key for key, value in chosen.items() if key != "smp.enabled" and value != default.get(key))
    if not smp_enabled:
        unused = keys
        why = ("SMP is off (smp.enabled=false)" if config.smp.enabled is False else
               f"SMP is off (method {config.method_name} does not use it unless smp.enabled=true)")
    else:
        unused = [] if config.smp.tau == "auto" else [k for k in keys if k.startswith("smp.auto.")]
        why = f"smp.auto.* applies only with smp.tau=auto, and smp.tau is {config.smp.tau}"
    if unused:
        logger.warning("warning: %s %s no effect: %s", ", ".join(unused), "has" if len(unused) == 1 else "have", why)
