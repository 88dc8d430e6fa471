"""MLA, MMPareto, ReconBoost, DLMG and UME: each one's characteristic step by hand, then end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, count_host_reads, run_interrupted

import g2d.training.engine as engine
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.base import Batches, to_device
from g2d.errors import G2DError
from g2d.methods import build_method
from g2d.methods.base import MethodContext
from g2d.methods.dlmg import heuristic_weight, js_divergence
from g2d.methods.mla import entropy_gated, owm_projector_update
from g2d.methods.mmpareto import min_norm_weight, pareto_integrate
from g2d.methods.reconboost import reconcilement_loss, stage_plan
from g2d.models.multimodal import ModelOutput, MultimodalModel
from g2d.runs.check import preflight
from g2d.runs.experiment import run

METHODS_B = ("mla", "mmpareto", "reconboost", "dlmg", "ume")


def context_for(name, *overrides):
    """A method set up on a tiny mfeat model as the engine would, plus one training batch."""
    config = load_config(None, [*TINY, f"method.name={name}", *overrides])
    data = load_dataset(config.dataset)
    method = build_method(config.method, data.task, list(data.modalities))
    torch.manual_seed(0)
    model = MultimodalModel(data.modalities, config.model, data.num_classes)
    model.method_modules = method.build_modules(model.feature_dims, model.num_outputs)
    optimizer = engine.build_optimizer(model, config.optim)
    method.setup(MethodContext(model=model, optimizer=optimizer, data=data, device=torch.device("cpu"), config=config))
    batch = to_device(next(iter(Batches(data.splits["train"], 32, shuffle=False))), data, torch.device("cpu"))
    return method, model, batch


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), expected.detach(), atol=1e-6, rtol=1e-5)


def moved(before, module):
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())


# MLA


def test_owm_projector_update_by_hand():
    r = torch.tensor([3.0, 4.0])
    exact = owm_projector_update(torch.eye(2), r, alpha=0.0)  # I - r r^T / 25, Frobenius norm 1
    close(exact, torch.tensor([[16 / 25, -12 / 25], [-12 / 25, 9 / 25]]))
    assert (exact @ r).abs().max().item() < 1e-6  # orthogonal to the stored direction
    regularized = owm_projector_update(torch.eye(2), r, alpha=5.0)  # I - r r^T / 30, then normalized
    raw = torch.eye(2) - torch.outer(r, r) / 30
    close(regularized, raw / raw.norm())
    close(regularized @ r, r * 5 / 30 / raw.norm())


def test_mla_sub_steps_move_one_encoder_each_and_project_the_head_gradient():
    method, model, batch = context_for("mla", "optim.momentum=0.0", "optim.weight_decay=0.0")
    ctx = method.ctx
    head = method.head
    seen = []
    original_step = ctx.optimizer_step

    def recording_step(kappa=None):
        modality = method.modalities[len(seen)]
        record = {"modality": modality, "encoders": {m: snapshot(model.encoders[m]) for m in method.modalities},
                  "grad": head.output.weight.grad.clone(), "projector": method.projector.clone()}
        if modality == "mor":  # the unprojected gradient of this sub-step, recomputed by hand
            weight = head.output.weight.detach().clone().requires_grad_(True)
            features = model.encoders["mor"](batch["mor"])
            loss = F.cross_entropy(F.linear(features, weight, head.output.bias.detach()), batch["label"])
            record["raw"] = torch.autograd.grad(loss, weight)[0]
            record["r"] = features.detach().mean(dim=0)
        original_step(kappa)
        record["after"] = {m: snapshot(model.encoders[m]) for m in method.modalities}
        seen.append(record)

    ctx.optimizer_step = recording_step
    method.on_epoch_start(0)
    method.train_step(batch, 0)
    assert [s["modality"] for s in seen] == ["pix", "mor"]
    for record in seen:
        for m in method.modalities:
            changed = any(not torch.equal(record["encoders"][m][n], record["after"][m][n]) for n in record["after"][m])
            assert changed == (m == record["modality"]), (record["modality"], m)
    # The first sub-step of training has no earlier direction to protect: identity projector.
    assert torch.equal(seen[0]["projector"], torch.eye(head.input_dim))
    second = seen[1]
    r, alpha = second["r"], 0.1  # alpha = 0.1 ** (1 + batch 0 / batches per epoch)
    unnormalized = torch.eye(head.input_dim) - torch.outer(r, r) / (alpha + r @ r)
    projector = unnormalized / unnormalized.norm()
    close(second["projector"], projector)
    close(second["grad"], second["raw"] @ projector.t())
    # Along the stored direction r the gradient keeps only alpha / (alpha + |r|^2) / |P|_F of itself.
    shrink = alpha / (alpha + r @ r) / unnormalized.norm()
    close(second["grad"] @ r, shrink * (second["raw"] @ r))
    assert shrink < 0.05


def test_mla_entropy_gating_by_hand():
    confident, flat = [3.0, 0.0], [0.2, 0.0]
    stacked = torch.tensor([[confident], [flat]])

    def entropy(logits):
        p = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
        return -sum(pi * math.log(pi) for pi in p)

    w = [math.exp(-entropy(confident)), math.exp(-entropy(flat))]
    w = [x / sum(w) for x in w]
    expected = [w[0] * a + w[1] * b for a, b in zip(confident, flat)]
    assert entropy_gated(stacked)[0].tolist() == pytest.approx(expected, rel=1e-6)


# MMPareto


def test_min_norm_weight_is_the_closed_form_mgda_solution():
    g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]  # cosine -1/sqrt(2)
    gamma = min_norm_weight(g1, g2).item()
    assert gamma == pytest.approx(0.6)  # (g2.g2 - g1.g2) / |g1 - g2|^2 = 3 / 5
    norms = [((c * g1[0] + (1 - c) * g2[0]).norm().item(), c) for c in torch.linspace(0, 1, 1001).tolist()]
    assert min(norms)[1] == pytest.approx(0.6, abs=1e-3)


def test_pareto_integration_by_hand():
    conflicting = pareto_integrate([torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])], gamma=1.5)
    # 2 (0.6 g1 + 0.4 g2) = [0.4, 0.8], rescaled to |g1 + g2| = 1, times 1.5
    assert conflicting[0].tolist() == pytest.approx([1.5 * 0.4 / math.sqrt(0.8), 1.5 * 0.8 / math.sqrt(0.8)], rel=1e-6)
    agreeing = pareto_integrate([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])], gamma=1.5)
    assert agreeing[0].tolist() == pytest.approx([3.0, 1.5])  # 0.5 / 0.5, no rescaling, times 1.5
    # Weights come from the whole encoder's gradient, rescaling from each parameter tensor.
    split = pareto_integrate([torch.tensor([1.0]), torch.tensor([0.0])],
                             [torch.tensor([-1.0]), torch.tensor([1.0])], gamma=1.5)
    assert [t.item() for t in split] == pytest.approx([1.5 * 0.4, 1.5 * 1.0])  # 0.4 kept (|sum| 0); 0.8 -> 1


def test_mmpareto_step_sets_integrated_encoder_gradients():
    method, model, batch = context_for("mmpareto")
    ctx = method.ctx
    captured = {}
    ctx.optimizer_step = lambda kappa=None: captured.update({n: p.grad.clone() for n, p in model.named_parameters()
                                                             if p.grad is not None})
    method.train_step(batch, 0)
    output = model(batch)
    labels = batch["label"]
    multimodal = F.cross_entropy(output.logits, labels)
    for m in method.modalities:
        params = list(model.encoders[m].parameters())
        g_mm = list(torch.autograd.grad(multimodal, params, retain_graph=True))
        unimodal = F.cross_entropy(method.heads(output.features)[m], labels)
        g_m = list(torch.autograd.grad(unimodal, params, retain_graph=True))
        expected = pareto_integrate(g_mm, g_m, 1.5)
        for (name, _), grad in zip(model.encoders[m].named_parameters(), expected):
            close(captured[f"encoders.{m}.{name}"], grad)
    head_grad = torch.autograd.grad(F.cross_entropy(method.heads(output.features)["pix"], labels),
                                    method.heads.heads["pix"].weight)[0]
    close(captured["method_modules.heads.pix.weight"], head_grad)


# ReconBoost


def test_reconboost_stage_plan():
    plan = [stage_plan(e, 2, 1, 2) for e in range(7)]
    assert plan == [(0, 0, "boost"), (0, 0, "boost"), (0, 0, "rectify"),
                    (1, 1, "boost"), (1, 1, "boost"), (1, 1, "rectify"), (2, 0, "boost")]
    assert [stage_plan(e, 1, 0, 3)[1] for e in range(5)] == [0, 1, 2, 0, 1]


def test_reconcilement_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ensemble = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.e / (math.e + 2)
    q0, q1 = math.e / (math.e + 2), 1 / 3
    expected = ((5 - q0) * -math.log(p0) + (5 - q1) * -math.log(p1)) / 2 / 3
    assert reconcilement_loss(logits, ensemble, labels, 5.0, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_reconboost_trains_the_stage_modality_then_rectifies_the_ensemble():
    method, model, batch = context_for("reconboost", "method.reconboost.stage_epochs=1",
                                       "method.reconboost.rectify_epochs=1")
    expected = [("boost", {"pix"}, False), ("rectify", {"pix"}, True), ("boost", {"mor"}, False),
                ("rectify", {"pix", "mor"}, True)]
    for epoch, (phase, trained, rate_moves) in enumerate(expected):
        before = {m: snapshot(model.encoders[m]) for m in method.modalities}
        rate = method.boosting.boost_rate.detach().clone()
        method.on_epoch_start(epoch)
        terms = method.train_step(batch, epoch)
        assert method.phase == phase
        assert {m for m in method.modalities if moved(before[m], model.encoders[m])} == trained
        assert (not torch.equal(rate, method.boosting.boost_rate)) == rate_moves
        assert ("ga" in terms) == (phase == "boost" and epoch > 0)
    assert method.members() == ["pix", "mor"]


# DLMG


def test_js_divergence_by_hand():
    p, q = [0.5, 0.5], [0.75, 0.25]
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b))

    value = js_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])).item()
    assert value == pytest.approx(0.5 * (kl(p, m) + kl(q, m)), rel=1e-6)
    assert value != pytest.approx(0.5 * (kl(m, p) + kl(m, q)), rel=1e-3)  # not the official code's KL(m || .)


def test_dlmg_loss_and_heuristic_weight_by_hand():
    assert [heuristic_weight(e, 0.3) for e in (0, 1, 20)] == pytest.approx([0.95, math.exp(-0.3), 0.05])
    method = build_method({"name": "dlmg"}, "classification", ["a", "b", "c"])
    method.weight = torch.tensor(0.25)
    logits = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]]), "c": torch.tensor([[0.0, 0.0]])}
    output = ModelOutput(features={}, logits=torch.tensor([[2.0, 0.0]]), modality_logits=logits)
    loss, terms = method.loss(output, {"label": torch.tensor([0])}, None)
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    pairs = [js_divergence(logits[a], logits[b]).item() for a, b in (("a", "b"), ("a", "c"), ("b", "c"))]
    assert loss.item() == pytest.approx(2 * (0.75 * ce + 0.25 * sum(pairs) / 3), rel=1e-6)


def test_dlmg_learned_weight_follows_the_hypergradient():
    method, model, batch = context_for("dlmg", "method.dlmg.strategy=learned", "method.dlmg.weight_lr=0.5")
    params = [p for p in model.parameters() if p.requires_grad]
    output = model(batch)
    g_cls = torch.autograd.grad(F.cross_entropy(output.logits, batch["label"]), params, retain_graph=True)
    g_align = torch.autograd.grad(js_divergence(output.modality_logits["pix"], output.modality_logits["mor"]), params)
    model.eval()
    validation = method.validation_batch
    g_val = torch.autograd.grad(F.cross_entropy(model(validation).logits, validation["label"]), params)
    model.train()
    val = torch.cat([v.flatten() for v in g_val])
    difference = torch.cat([(a - c).flatten() for a, c in zip(g_align, g_cls)])
    cosine = (val @ difference / (val.norm() * difference.norm())).item()
    method.on_epoch_start(0)
    method.train_step(batch, 0)
    assert method.weight.item() == pytest.approx(min(max(0.95 + 0.5 * cosine, 0.05), 0.95), rel=1e-5)
    assert method.weight.item() != pytest.approx(0.95)
    assert len(validation["label"]) == method.ctx.config.trainer.batch_size


# UME


def test_ume_predicts_the_mean_of_unimodal_logits_and_trains_each_alone():
    method, model, batch = context_for("ume")
    features = {"pix": torch.randn(4, 16), "mor": torch.randn(4, 16)}
    fused, per_modality = method.predict(ModelOutput(features=features, logits=torch.zeros(4, 10), modality_logits={}))
    heads = method.heads.heads
    for m in ("pix", "mor"):
        close(per_modality[m], heads[m](features[m]))
    close(fused, (heads["pix"](features["pix"]) + heads["mor"](features["mor"])) / 2)
    captured = {}
    method.ctx.optimizer_step = lambda kappa=None: captured.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    method.train_step(batch, 0)
    assert not any(name.startswith("fusion.") for name in captured)
    pix_only = F.cross_entropy(heads["pix"](model.encoders["pix"](batch["pix"])), batch["label"])
    weight = model.encoders["pix"].net[0].weight
    close(captured["encoders.pix.net.0.weight"], torch.autograd.grad(pix_only, weight)[0])


# End to end, errors, resume


@pytest.mark.parametrize("name", METHODS_B)
@pytest.mark.parametrize("modalities, setting", [
    ("[pix,mor]", []),
    ("[pix,fou,mor]", ["model.fusion=concat", "model.encoders.mor.hidden=[8]"]),  # k = 3, unequal feature sizes
])
def test_end_to_end(tmp_path, tiny_overrides, name, modalities, setting):
    extra = ["method.reconboost.stage_epochs=1", "method.reconboost.rectify_epochs=1"] if name == "reconboost" else []
    metrics = run(load_config(None, [*tiny_overrides, f"method.name={name}", f"dataset.modalities={modalities}",
                                     "smp.enabled=false", *setting, *extra]))
    assert metrics["method"] == name
    assert set(metrics["test"]["per_modality"]) == set(modalities.strip("[]").split(","))
    assert 0.3 < metrics["test"]["multimodal"]["accuracy"] <= 1.0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 3 and all(math.isfinite(h["train"]["loss"]) for h in history)


@pytest.mark.parametrize("name", ["mla", "mmpareto", "ume", "dlmg"])
def test_smp_acts_on_the_encoders(tmp_path, tiny_overrides, name):
    metrics = run(load_config(None, [*tiny_overrides, f"method.name={name}", "smp.enabled=true", "smp.tau=[1]"]))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["smp"]["enabled"] and history[0]["train"]["kappa/pix"] + history[0]["train"]["kappa/mor"] == 1.0
    assert history[1]["train"]["kappa/pix"] == history[1]["train"]["kappa/mor"] == 1.0


def test_errors_name_the_key():
    with pytest.raises(G2DError, match="method.mla.test_fusion"):
        build_method({"name": "mla", "mla": {"test_fusion": "max"}}, "classification", ["a", "b"])
    with pytest.raises(G2DError, match="method.mla.fixed_weights"):
        build_method({"name": "mla", "mla": {"fixed_weights": [1.0]}}, "classification", ["a", "b"])
    for name in ("reconboost", "dlmg"):
        with pytest.raises(G2DError, match=name):
            build_method({"name": name}, "regression", ["a", "b"])
    with pytest.raises(G2DError, match="config key smp.enabled: reconboost does not combine with SMP"):
        preflight(load_config(None, [*TINY, "method.name=reconboost", "smp.enabled=true"]))


@pytest.mark.parametrize("name, extra", [("mla", []), ("dlmg", ["method.dlmg.strategy=learned"]),
                                         ("reconboost", ["method.reconboost.stage_epochs=1"])])
def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch, name, extra):
    def config(folder, *more):
        return load_config(None, [*TINY, f"method.name={name}", "smp.enabled=false", *extra, f"out={tmp_path / folder}",
                                  f"teachers.root={tmp_path / 'teachers'}", *more])

    whole = run(config("whole"))
    run_interrupted(monkeypatch, config("split"))
    resumed = run(config("split", "trainer.resume=true"))
    for file in ("last.safetensors", "best.safetensors"):
        whole_bytes = (tmp_path / "whole" / "checkpoints" / file).read_bytes()
        assert whole_bytes == (tmp_path / "split" / "checkpoints" / file).read_bytes(), file
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize("name", METHODS_B)
def test_training_step_makes_no_host_synchronization(tmp_path, monkeypatch, name):

    def config(folder, batch_size):
        return load_config(None, [*TINY, f"method.name={name}", "smp.enabled=false", "trainer.epochs=1",
                                  f"trainer.batch_size={batch_size}", f"out={tmp_path / folder}",
                                  f"teachers.root={tmp_path / 'teachers'}", "method.dlmg.strategy=learned"])

    assert count_host_reads(monkeypatch, config("few", 128)) == count_host_reads(monkeypatch, config("many", 16))
