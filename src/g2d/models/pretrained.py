"""Encoders that start from pretrained weights: reading a weights file, freezing, own learning rate.

``model.encoders.<m>.weights=PATH`` names a safetensors file, or a torch file holding only
tensors (read with ``torch.load(weights_only=True)``, so nothing is unpickled). Its tensors
under ``weights_prefix`` (the prefix removed; e.g. ``encoders.pix.`` to take one encoder out
of a g2d checkpoint) must match the encoder's state dict key for key and shape for shape;
anything else is one error naming the file, the missing and unexpected keys, the shapes
that differ and integer tensors given for floating-point parameters. Values are copied as
they are, so the encoder starts bit for bit from the file.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from g2d.config import EncoderConfig
from g2d.errors import G2DError

SAFETENSORS_SUFFIXES = (".safetensors",)
LISTED_KEYS = 5


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file, or in a torch file loaded with ``weights_only``."""
    if not path.is_file():
        raise G2DError(f"{key}: weights file not found: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise G2DError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]}) ({key})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; weights_only refuses code
        raise G2DError(f"{path}: not a torch file of tensors loadable with weights_only=True "
                       f"({str(exc).splitlines()[0]}) ({key})") from exc
    if isinstance(state, dict) and set(state) == {"state_dict"}:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise G2DError(f"{path}: expected a mapping of names to tensors (a state dict) ({key})")
    return state


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED_KEYS])
    return shown + (f" (+{len(names) - LISTED_KEYS} more)" if len(names) > LISTED_KEYS else "")


def load_encoder_weights(encoder: nn.Module, path: Path, prefix: str, key: str) -> None:
    """Replace ``encoder``'s state with the file's tensors under ``prefix``; any mismatch is one error."""
    found = read_state_dict(path, key)
    state = {name[len(prefix):]: value for name, value in found.items() if name.startswith(prefix)}
    if not state:
        raise G2DError(f"{path}: no tensor name starts with {prefix!r} ({key}_prefix); "
                       f"the file holds {listed(sorted(found))}")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
              for name in sorted(set(state) & set(expected)) if state[name].shape != expected[name].shape]
    # A float parameter filled from integers (a quantized or mis-saved file) would silently lose its values' meaning.
    integers = [f"{name} {state[name].dtype} vs {expected[name].dtype}" for name in sorted(set(state) & set(expected))
                if expected[name].is_floating_point() and not state[name].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    if shapes:
        problems.append(f"shapes differ (file vs encoder): {listed(shapes)}")
    if integers:
        problems.append(f"integer values for floating-point parameters (file vs encoder): {listed(integers)}")
    if problems:
        where = f" under prefix {prefix!r}" if prefix else ""
        raise G2DError(f"{path}: does not fit the encoder of {key.rsplit('.', 1)[0]}{where}; {'; '.join(problems)}")
    encoder.load_state_dict(state)


def check_options(config: EncoderConfig, prefix: str) -> None:
    if not (math.isfinite(config.lr_scale) and config.lr_scale >= 0):
        raise G2DError(f"{prefix}.lr_scale: must be a finite number >= 0, got {config.lr_scale}")
    if config.weights_prefix and not config.weights:
        raise G2DError(f"{prefix}.weights_prefix: set only together with {prefix}.weights")


def apply_pretrained(encoder: nn.Module, config: EncoderConfig, prefix: str) -> nn.Module:
    """Load ``config.weights`` into ``encoder`` and freeze it when asked; ``prefix`` is its config key."""
    check_options(config, prefix)
    if config.weights:
        load_encoder_weights(encoder, Path(config.weights), config.weights_prefix, f"{prefix}.weights")
    if config.freeze:
        encoder.requires_grad_(False)
    return encoder


def scale_learning_rates(groups: list[dict], lr_scales: dict[str, float], lr: float) -> list[dict]:
    """Give the param group ``encoder:<m>`` the rate ``lr * lr_scales[m]`` where that scale is not 1."""
    for group in groups:
        kind, _, modality = group["name"].partition(":")
        if kind == "encoder" and lr_scales.get(modality, 1.0) != 1.0:
            group["lr"] = lr * lr_scales[modality]
    return groups


def file_digest(paths: list[Path]) -> str:
    """A SHA-256 over the files' names and bytes, read in chunks, so large weight files are never held twice."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def pretrained_fingerprint(config: EncoderConfig) -> dict[str, str]:
    """Hashes of the files an encoder starts from (weights file, model folder), for teacher metadata.

    Empty for an encoder built from scratch, so teachers without pretrained weights record
    nothing new; a teacher whose starting files have since changed no longer matches.
    """
    found = {}
    if config.weights and Path(config.weights).is_file():
        found["weights"] = file_digest([Path(config.weights)])
    if config.name == "hf" and config.path and Path(config.path).is_dir():
        found["path"] = file_digest(sorted(p for p in Path(config.path).rglob("*") if p.is_file()))
    return found
