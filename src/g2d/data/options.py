"""Checking a loader's ``dataset.options`` against its defaults, with errors that name the key."""

from __future__ import annotations

from typing import Any, Sequence

from g2d.errors import G2DError


def reject_unknown(dataset: str, given: dict[str, Any] | None, allowed: Sequence[str]) -> None:
    """A ``dataset.options`` key the loader does not take is an error naming it and listing those it does."""
    unknown = sorted(set(given or {}) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) if allowed else "none"
        raise G2DError(f"config key dataset.options.{unknown[0]}: not an option of dataset {dataset} (options: {listed})")


def read_options(dataset: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key or a value of another type than its default is an error.

    An int is accepted where the default is a float; a bool is never taken for a number.
    """
    reject_unknown(dataset, given, list(defaults))
    options = dict(defaults)
    for key, value in (given or {}).items():
        default = defaults[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
            value = list(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise G2DError(f"config key dataset.options.{key}: expected {type(default).__name__}, got {value!r}")
        options[key] = value
    return options


def require_positive(options: dict[str, Any], keys: Sequence[str]) -> None:
    """Each of ``keys`` must be a number > 0."""
    for key in keys:
        if options[key] <= 0:
            raise G2DError(f"config key dataset.options.{key}: must be > 0, got {options[key]}")


def require_choice(options: dict[str, Any], key: str, choices: Sequence[str]) -> None:
    if options[key] not in choices:
        raise G2DError(f"config key dataset.options.{key}: {options[key]!r} is not one of {', '.join(choices)}")
