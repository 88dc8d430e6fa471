"""Parity with the official codes: one training step per fixture in ``../shared/parity``.

Each fixture holds the weights, the batch and any method state that the official (authors')
code started from, and what that code computed in one step: loss terms, coefficients,
gradients after modulation, parameters after the optimizer step. The test rebuilds the same
setup through g2d's public API, loads the weights with strict key matching, runs exactly one
training step and compares every listed quantity within the fixture's tolerance
(``max|actual - expected| <= atol + rtol * max|expected|``). A failure names the first
quantity and tensor that differs. docs/parity.md says what each fixture covers.

The fixtures live outside the repository (``G2D_PARITY_DIR`` or ``../shared/parity``). A clone
without them skips with that reason; in CI (``CI`` set) their absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from g2d.runs.parity import (
    build_step,
    first_difference,
    load_fixture,
    observed,
    run_one_step,
)

PARITY_DIR = Path(os.environ.get("G2D_PARITY_DIR", ROOT.parent / "shared" / "parity"))
FIXTURES = ("g2d_step", "ogm_ge", "agm", "pmr", "mmpareto", "mla", "reconboost")


def fixture_files(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The fixture's JSON spec and tensors; skip (locally) or fail (CI) when they are absent."""
    spec_path, tensor_path = PARITY_DIR / f"{name}.json", PARITY_DIR / f"{name}.safetensors"
    if not (spec_path.is_file() and tensor_path.is_file()):
        message = f"parity fixture {name} not found in {PARITY_DIR} (set G2D_PARITY_DIR or place ../shared/parity)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return load_fixture(PARITY_DIR, name)


@pytest.mark.parametrize("name", FIXTURES)
def test_one_step_matches_the_official_code(name: str) -> None:
    spec, tensors = fixture_files(name)
    model, method, batch = build_step(spec, tensors)
    terms = run_one_step(method, batch, spec["epoch"])
    difference = first_difference(spec, tensors, observed(model, method, terms))
    assert difference is None, f"{name} ({spec['reference']['code']}): {difference}"


def test_every_fixture_in_the_folder_is_checked() -> None:
    """A fixture added to the folder without a test here would silently go unchecked."""
    if not PARITY_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixtures not found: {PARITY_DIR}")
        pytest.skip(f"parity fixtures not found: {PARITY_DIR}")
    assert sorted(p.stem for p in PARITY_DIR.glob("*.json")) == sorted(FIXTURES)


def test_a_difference_is_named() -> None:
    """The failure message names the group, the tensor and the size of the difference."""
    spec = {"compare": [{"name": "grads", "keys": ["expected.grad.w"], "rtol": 1e-6, "atol": 0.0}]}
    expected = {"expected.grad.w": torch.tensor([1.0, 2.0])}
    assert first_difference(spec, expected, {"expected.grad.w": torch.tensor([1.0, 2.0])}) is None
    message = first_difference(spec, expected, {"expected.grad.w": torch.tensor([1.0, 2.1])})
    assert message is not None and "grads: expected.grad.w" in message and "1.000e-01" in message
    nan = first_difference(spec, expected, {"expected.grad.w": torch.tensor([1.0, float("nan")])})
    assert nan is not None
    assert "not produced" in first_difference(spec, expected, {})
