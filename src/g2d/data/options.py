"""Helpers for a dataset's ``Options`` dataclass (its ``dataset.options``), with errors that name the key."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from typing import Any, Sequence

from g2d.errors import G2DError


def require_positive(options: Any, keys: Sequence[str]) -> None:
    """Each of ``keys`` must be a number > 0 (called from an ``Options.__post_init__``)."""
    for key in keys:
        if getattr(options, key) <= 0:
            raise G2DError(f"config key dataset.options.{key}: must be > 0, got {getattr(options, key)}")


def plain(options: Any) -> dict[str, Any]:
    """The options as a plain dict, ``Choice`` values as their strings, for loaders that pass them on."""
    return {key: value.value if isinstance(value, Enum) else value for key, value in asdict(options).items()}
