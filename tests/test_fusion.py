"""Fusion modules: shapes for k = 2..4, the per-modality rule of each fusion (A.5), gradient
isolation, hand-computed FiLM / gated / attention cases, and a tiny G²D + SMP run per fusion."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY
from torch import nn

from g2d.config import load_config
from g2d.data.base import ModalitySpec
from g2d.errors import G2DError
from g2d.models import FUSIONS, DeactivationFusion, MultimodalModel, build_fusion
from g2d.runs.check import preflight
from g2d.runs.experiment import run

INTERACTION = ["film", "gated", "cross_attention"]


def make_features(k: int, batch: int = 4, grad: bool = False) -> tuple[list[str], dict[str, int], dict[str, torch.Tensor]]:
    """k modalities with different feature sizes, so fusions must cope with unequal d_m."""
    modalities = [f"m{i}" for i in range(k)]
    dims = {m: 3 + 2 * i for i, m in enumerate(modalities)}
    features = {m: torch.randn(batch, dims[m], requires_grad=grad) for m in modalities}
    return modalities, dims, features


def randomize_biases(fusion: nn.Module) -> None:
    """Zero-initialized biases would hide a wrong bias share or a bias-only path; make them random."""
    for name, param in fusion.named_parameters():
        if name.endswith("bias"):
            nn.init.normal_(param)


def set_linear(layer: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


def expected_modality_logits(fusion: nn.Module, features: dict[str, torch.Tensor], m: str) -> torch.Tensor:
    """Each fusion's documented rule for modality m's logits, computed without its forward."""
    if fusion.name in ("late", "sum"):
        return fusion.heads[m](features[m])
    if fusion.name == "concat":
        start = 0
        for j in fusion.modalities:
            if j == m:
                weight = fusion.head.weight[:, start : start + fusion.feature_dims[j]]
                return features[m] @ weight.T + fusion.head.bias / len(fusion.modalities)
            start += fusion.feature_dims[j]
    assert isinstance(fusion, DeactivationFusion), fusion.name
    alone = {j: f if j == m else torch.zeros_like(f) for j, f in features.items()}
    return fusion.fuse(alone)


def test_registry_holds_the_six_fusions() -> None:
    assert set(FUSIONS) == {"late", "sum", "concat", "film", "gated", "cross_attention"}
    assert all(cls.name == name for name, cls in FUSIONS.items())


def test_unknown_fusion_names_the_key() -> None:
    with pytest.raises(G2DError, match=r"model\.fusion.*cross_attention"):
        build_fusion("bigated", ["a", "b"], {"a": 3, "b": 3}, 2)


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("outputs", [5, 1])
def test_shapes(name: str, k: int, outputs: int) -> None:
    modalities, dims, features = make_features(k)
    fused, per_modality = build_fusion(name, modalities, dims, outputs)(features)
    assert fused.shape == (4, outputs)
    assert list(per_modality) == modalities
    assert all(logits.shape == (4, outputs) for logits in per_modality.values())


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_per_modality_logits_follow_the_fusion_rule(name: str, k: int) -> None:
    modalities, dims, features = make_features(k)
    fusion = build_fusion(name, modalities, dims, 5)
    randomize_biases(fusion)
    fused, per_modality = fusion(features)
    for m in modalities:
        torch.testing.assert_close(per_modality[m], expected_modality_logits(fusion, features, m))
        assert not torch.allclose(per_modality[m], fused)
    if isinstance(fusion, DeactivationFusion):
        torch.testing.assert_close(fused, fusion.fuse(features))


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_modality_logits_reach_only_their_own_features(name: str, k: int) -> None:
    modalities, dims, features = make_features(k, grad=True)
    fusion = build_fusion(name, modalities, dims, 5)
    randomize_biases(fusion)
    fused, per_modality = fusion(features)
    inputs = [features[j] for j in modalities]
    for m in modalities:
        grads = torch.autograd.grad(per_modality[m].square().sum(), inputs, retain_graph=True, allow_unused=True)
        for j, grad in zip(modalities, grads):
            if j == m:
                assert grad is not None and grad.abs().sum() > 0, (m, j)
            else:
                assert grad is None or torch.all(grad == 0), (m, j)
    for grad in torch.autograd.grad(fused.square().sum(), inputs):
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["late", "sum", "concat"])
def test_one_modality_works_for_the_partition_fusions(name: str) -> None:
    fusion = build_fusion(name, ["a"], {"a": 3}, 2)
    features = {"a": torch.randn(4, 3)}
    fused, per_modality = fusion(features)
    torch.testing.assert_close(fused, per_modality["a"])


@pytest.mark.parametrize("name", INTERACTION)
def test_one_modality_is_a_clear_error_for_interaction_fusions(name: str) -> None:
    with pytest.raises(G2DError, match=rf"model\.fusion: {name} .*at least two"):
        build_fusion(name, ["a"], {"a": 3}, 2)


def test_film_by_hand() -> None:
    fusion = build_fusion("film", ["a", "b"], {"a": 2, "b": 1}, 1)
    set_linear(fusion.film["a"], [[1], [2], [0], [1]], [0, 1, 0.5, 0])  # [gamma_a | beta_a] from f_b
    set_linear(fusion.film["b"], [[1, 1], [0, 2]], [0, 0.5])  # [gamma_b | beta_b] from f_a
    set_linear(fusion.head, [[1, 2, 1]], [0.25])
    features = {"a": torch.tensor([[1.0, -1.0]]), "b": torch.tensor([[3.0]])}
    fused, per_modality = fusion(features)
    # gamma_a = [3, 7], beta_a = [0.5, 3] -> h_a = [3.5, -4]; gamma_b = 0, beta_b = -1.5 -> h_b = -1.5
    torch.testing.assert_close(fused, torch.tensor([[3.5 - 8 - 1.5 + 0.25]]))
    # b zeroed: gamma_a = [0, 1], beta_a = [0.5, 0] -> h_a = [0.5, -1]; h_b = beta_b(f_a) = -1.5
    torch.testing.assert_close(per_modality["a"], torch.tensor([[0.5 - 2 - 1.5 + 0.25]]))
    # a zeroed: h_a = beta_a(f_b) = [0.5, 3]; gamma_b, beta_b = bias = [0, 0.5] -> h_b = 0.5
    torch.testing.assert_close(per_modality["b"], torch.tensor([[0.5 + 6 + 0.5 + 0.25]]))


def test_film_conditions_each_modality_on_all_the_others() -> None:
    fusion = build_fusion("film", ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, 1)
    for m in "abc":
        set_linear(fusion.film[m], [[1, 0], [0, 1]], [0, 0])  # gamma = first other, beta = second other
    set_linear(fusion.head, [[1, 10, 100]], [0])
    fused, _ = fusion({"a": torch.tensor([[2.0]]), "b": torch.tensor([[3.0]]), "c": torch.tensor([[5.0]])})
    # h_a = 3 * 2 + 5 = 11, h_b = 2 * 3 + 5 = 11, h_c = 2 * 5 + 3 = 13
    torch.testing.assert_close(fused, torch.tensor([[11 + 110 + 1300.0]]))


def test_gated_by_hand() -> None:
    fusion = build_fusion("gated", ["a", "b"], {"a": 2, "b": 1}, 1)
    assert fusion.hidden_dim == 2
    set_linear(fusion.hidden["a"], [[1, 0], [0, 1]], [0, 0])
    set_linear(fusion.hidden["b"], [[1], [-1]], [0, 0])
    set_linear(fusion.head, [[2, 1]], [1])
    ln3 = math.log(3)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25
    fused, per_modality = fusion({"a": torch.tensor([[ln3, 0.0]]), "b": torch.tensor([[ln3]])})
    # z_a = [ln3, 0], z_b = [ln3, -ln3]; g_a = sigmoid(z_b) = [.75, .25], g_b = sigmoid(z_a) = [.75, .5]
    # g_a z_a + g_b z_b = [1.5 ln3, -0.5 ln3]
    torch.testing.assert_close(fused, torch.tensor([[2.5 * ln3 + 1]]))
    # b zeroed: z_b = 0 so g_a = 0.5 and g_b z_b = 0 -> [0.5 ln3, 0]
    torch.testing.assert_close(per_modality["a"], torch.tensor([[ln3 + 1]]))
    # a zeroed: z_a = 0 so g_b = 0.5 -> [0.5 ln3, -0.5 ln3]
    torch.testing.assert_close(per_modality["b"], torch.tensor([[0.5 * ln3 + 1]]))


def test_gate_averages_the_other_modalities() -> None:
    fusion = build_fusion("gated", ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, 1)
    for m in "abc":
        set_linear(fusion.hidden[m], [[1]], [0])
    set_linear(fusion.head, [[1]], [0])
    fused, _ = fusion({"a": torch.tensor([[1.0]]), "b": torch.tensor([[-1.0]]), "c": torch.tensor([[1.0]])})
    # sigmoid(mean(b, c)) a + sigmoid(mean(a, c)) b + sigmoid(mean(a, b)) c = 0.5 - sigmoid(1) + 0.5
    torch.testing.assert_close(fused, torch.tensor([[1 - 1 / (1 + math.exp(-1))]]))


def attention_by_identity(fusion: nn.Module, query_key: float) -> None:
    """Tokens = features, values and output map = identity, query = key = ``query_key`` * identity."""
    eye = torch.eye(fusion.token_dim).tolist()
    zero = [0.0] * fusion.token_dim
    for m in fusion.modalities:
        set_linear(fusion.project[m], eye, zero)
    for layer in (fusion.query, fusion.key):
        set_linear(layer, (query_key * torch.eye(fusion.token_dim)).tolist(), zero)
    set_linear(fusion.value, eye, zero)
    set_linear(fusion.out, eye, zero)


def test_cross_attention_by_hand() -> None:
    fusion = build_fusion("cross_attention", ["a", "b"], {"a": 2, "b": 2}, 1)
    features = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([[3.0, -1.0]])}
    attention_by_identity(fusion, 1.0)
    _, weights = fusion.attend(fusion.tokens(features))
    # scores t_i . t_j / sqrt(2): a.a = 10, a.b = 0, b.b = 10
    high = 1 / (1 + math.exp(-10 / math.sqrt(2)))
    torch.testing.assert_close(weights, torch.tensor([[[high, 1 - high], [1 - high, high]]]))
    attention_by_identity(fusion, 0.0)  # zero scores: each token attends half to itself, half to the other
    set_linear(fusion.head, [[1, 2, 3, 5]], [0])
    fused, _ = fusion(features)
    # r_a = LayerNorm([1, 3] + [2, 1]) = LayerNorm([3, 4]) = [-1, 1]; r_b = LayerNorm([5, 0]) = [1, -1]
    torch.testing.assert_close(fused, torch.tensor([[-1 + 2 + 3 - 5.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_cross_attention_is_normalized(k: int) -> None:
    modalities, dims, features = make_features(k, batch=6)
    fusion = build_fusion("cross_attention", modalities, dims, 3)
    assert fusion.token_dim == max(dims.values())
    refined, weights = fusion.attend(fusion.tokens({m: 10 * f for m, f in features.items()}))
    assert weights.shape == (6, k, k)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(6, k))
    torch.testing.assert_close(refined.mean(dim=-1), torch.zeros(6, k), atol=1e-5, rtol=0)
    torch.testing.assert_close(refined.var(dim=-1, unbiased=False), torch.ones(6, k), atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def teachers_root(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("name", INTERACTION)
def test_g2d_with_smp_runs_end_to_end(name: str, tmp_path, teachers_root) -> None:
    # mor gets a smaller encoder, so its features differ in size from pix's.
    config = load_config(None, [*TINY, "method.name=g2d", "smp.enabled=true", f"model.fusion={name}",
                                "model.encoders.mor.hidden=[8]", f"out={tmp_path / 'run'}",
                                f"teachers.root={teachers_root}"])
    run(config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion"] == name and metrics["smp"]["enabled"]
    assert set(metrics["test"]["per_modality"]) == {"pix", "mor"}
    for scores in [metrics["test"]["multimodal"], *metrics["test"]["per_modality"].values()]:
        assert 0.0 <= scores["accuracy"] <= 1.0 and math.isfinite(scores["loss"])


def test_a_fusion_takes_its_typed_settings_from_the_config() -> None:
    """``model.fusion_settings`` reaches the fusion as its ``Settings``; left out, the width is max d_m as before."""
    modalities, dims, _ = make_features(3)  # d_m = 3, 5, 7
    assert build_fusion("gated", modalities, dims, 2).hidden_dim == 7
    gated = build_fusion("gated", modalities, dims, 2, {"hidden": 16})
    assert gated.hidden_dim == 16 and gated.head.in_features == 16
    assert all(gated.hidden[m].out_features == 16 for m in modalities)
    config = load_config(None, ["model.fusion=cross_attention", "model.fusion_settings.hidden=4"])
    specs = {m: ModalitySpec("vector", (d,)) for m, d in dims.items()}
    model = MultimodalModel(specs, config.model, 2)
    assert model.fusion.token_dim == 4 and model.fusion.head.in_features == 3 * 4


@pytest.mark.parametrize("overrides, culprit", [
    (["model.fusion=late", "model.fusion_settings.hidden=8"],
     "config key model.fusion_settings.hidden: not a setting of fusion late (allowed: none)"),
    (["model.fusion=gated", "model.fusion_settings.hidden=0"],
     "config key model.fusion_settings.hidden: must be at least 1, got 0"),
    (["model.fusion=gated", "model.fusion_settings.hidden=wide"], "config key model.fusion_settings.hidden: "),
    (["model.fusion=gated", "model.fusion_settings.width=8"],
     "config key model.fusion_settings.width: not a setting of fusion gated (allowed: hidden)"),
])
def test_fusion_settings_are_checked_by_preflight_naming_the_key(overrides: list[str], culprit: str) -> None:
    with pytest.raises(G2DError) as refused:
        preflight(load_config(None, overrides))
    assert str(refused.value).startswith(culprit), str(refused.value)
