"""How far g2d's deliberate deviations move one step away from the official codes' answers.

For each parity fixture and each setting in which g2d's default differs from what the fixture
pins (docs/parity.md), rebuild the step with that setting and report, per compared group, the
worst ``max|actual - expected| / max|expected|`` against the official values. The fixture's own
setting is reported first, as the baseline of agreement.

    python benchmarks/parity_deviations.py [--fixtures ../shared/parity]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from g2d.runs.parity import build_step, load_fixture, observed, run_one_step

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "g2d_step": [("fixture: smp.suppression=conv_grad (authors)", []),
                 ("g2d default: smp.suppression=freeze", ["smp.suppression=freeze"]),
                 ("smp.suppression=zero_grad", ["smp.suppression=zero_grad"])],
    "agm": [("fixture: grad_clip off (official CREMA-D code)", []),
            ("g2d default: grad_clip=1.0 (official AV-MNIST code)", ["method.agm.grad_clip=1.0"])],
    "pmr": [("fixture: entropy term off", []),
            ("g2d default: entropy term on (entropy_epochs=15)", ["method.pmr.entropy_epochs=15"])],
    "mla": [("fixture: intended OWM projection (g2d)", []),
            ("official code as it runs: no projection", ["method.mla.projection=false"])],
    "ogm_ge": [("fixture: GE noise off", [])],
    "mmpareto": [("fixture", [])],
    "reconboost": [("fixture", [])],
}


def relative_differences(spec: dict, tensors: dict, overrides: list[str]) -> dict[str, float]:
    """Per compared group, the worst max|diff| / max|expected| of this setting's step."""
    model, method, batch = build_step(spec, tensors, overrides)
    actual = observed(model, method, run_one_step(method, batch, spec["epoch"]))
    worst = {}
    for group in spec["compare"]:
        rel = 0.0
        for key in group["keys"]:
            want = tensors[key].double()
            got = actual[key].double().reshape(want.shape)
            scale = want.abs().max().item()
            diff = (got - want).abs().max().item()
            rel = max(rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        worst[group["name"]] = rel
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared" / "parity")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| fixture | setting | compared group | worst rel. difference |\n| --- | --- | --- | --- |")
    for name, variants in VARIANTS.items():
        spec, tensors = load_fixture(args.fixtures, name)
        for label, overrides in variants:
            for group, rel in relative_differences(spec, tensors, overrides).items():
                print(f"| {name} | {label} | {group} | {rel:.1e} |")


if __name__ == "__main__":
    main()
