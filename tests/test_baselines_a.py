"""OGM-GE, AGM, PMR, MSES, MSLR: each one's characteristic step against hand-computed values,
end-to-end runs for k = 2 and k = 3, SMP taking over their coefficients, and MSES resume."""

import json
import math

import pytest
import torch
from conftest import TINY, count_host_reads, run_interrupted
from safetensors.torch import load_file

import g2d.training.engine as engine
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.base import Batches, to_device
from g2d.errors import G2DError
from g2d.methods import build_method
from g2d.methods.agm import (
    AGM,
    AGMParams,
    agm_coefficients,
    clip_large_gradients,
    mono_scores,
    shapley_weights,
)
from g2d.methods.base import MethodContext
from g2d.methods.mses import MSES, MSESParams
from g2d.methods.mslr import MSLR, MSLRParams
from g2d.methods.ogm_ge import modulate_gradients, ogm_coefficients
from g2d.methods.pmr import PMR, PMRParams
from g2d.models.multimodal import ModelOutput, MultimodalModel
from g2d.runs.experiment import run, train_teachers
from g2d.training.engine import seed_everything
from g2d.training.teachers import output_size

METHODS = ["ogm_ge", "agm", "pmr", "mses", "mslr"]


def tiny_config(tmp_path, name, *extra):
    return load_config(None, [*TINY, f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra])


def tiny_context(tmp_path, *extra):
    """A real model, optimizer and data (TINY mfeat pix + mor), without running the loop."""
    config = tiny_config(tmp_path, "unit", *extra)
    data = load_dataset(config.dataset)
    seed_everything(0)
    model = MultimodalModel(data.modalities, config.model, output_size(data))
    optimizer = engine.build_optimizer(model, config.optim)
    return MethodContext(model=model, optimizer=optimizer, data=data, device=torch.device("cpu"), config=config)


def first_batch(context):
    batch = next(iter(Batches(context.data.splits["train"], 32, shuffle=False)))
    return to_device(batch, context.data, context.device)


def logits_with_true_class_probability(probabilities):
    """Two-class logits [log p, log(1 - p)] whose softmax gives class 0 the probability p."""
    return torch.tensor([[math.log(p), math.log(1 - p)] for p in probabilities])


# OGM-GE

def test_ogm_coefficient_for_a_known_score_ratio():
    labels = torch.tensor([0, 0])
    strong = logits_with_true_class_probability([0.8, 0.6])  # mean 0.7
    weak = logits_with_true_class_probability([0.3, 0.4])  # mean 0.35: ratio 2
    coefficients = ogm_coefficients(torch.stack([strong, weak]), labels, alpha=0.8, task="classification")
    assert coefficients.tolist() == pytest.approx([1 - math.tanh(0.8 * 2.0), 1.0], rel=1e-5)
    three = ogm_coefficients(torch.stack([weak, strong, strong]), labels, alpha=0.1, task="classification")
    assert three.tolist() == pytest.approx([1.0, 1 - math.tanh(0.2), 1 - math.tanh(0.2)], rel=1e-5)


def test_ogm_leaves_the_weak_modality_untouched_and_scales_the_dominant():
    strong, weak = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    strong.grad, weak.grad = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.5, 0.25, -1.0])
    modulate_gradients([[strong], [weak]], torch.tensor([0.25, 1.0]), noise=False)
    assert strong.grad.tolist() == [0.25, -0.5, 1.0]
    assert weak.grad.tolist() == [0.5, 0.25, -1.0]


def test_ge_noise_has_the_gradient_std():
    torch.manual_seed(0)
    strong, weak = torch.nn.Parameter(torch.zeros(200_000)), torch.nn.Parameter(torch.zeros(200_000))
    strong.grad, weak.grad = 3.0 * torch.randn(200_000), 0.5 * torch.randn(200_000)
    before_strong, before_weak = strong.grad.clone(), weak.grad.clone()
    modulate_gradients([[strong], [weak]], torch.tensor([0.2, 1.0]), noise=True)
    strong_noise = strong.grad - 0.2 * before_strong
    weak_noise = weak.grad - before_weak
    assert strong_noise.std().item() == pytest.approx(before_strong.std().item(), rel=0.02)
    assert weak_noise.std().item() == pytest.approx(before_weak.std().item(), rel=0.02)
    assert abs(strong_noise.mean().item()) < 0.05


def test_ogm_conv_option_targets_only_convolution_weights(tmp_path):
    method = build_method({"name": "ogm_ge", "ogm_ge": {"parameters": "conv"}}, "classification", ["pix", "mor"])
    method.setup(tiny_context(tmp_path))
    assert method.targets == [[], []]  # MLP encoders have no 4-D weights
    with pytest.raises(G2DError, match="method.ogm_ge.parameters"):
        build_method({"name": "ogm_ge", "ogm_ge": {"parameters": "bn"}}, "classification", ["pix", "mor"])


# AGM

class Stub(torch.nn.Module):
    """f(a, b) = a * b + a + 2 b, recording the mode of every call."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, inputs):
        self.modes.append(self.training)
        a, b = inputs["a"], inputs["b"]
        return ModelOutput(features={}, logits=a * b + a + 2 * b, modality_logits={})

    def encoder_parameters(self, modality):
        return []


def test_shapley_weights_match_the_official_formulas():
    w2 = shapley_weights(2)  # subsets as bit masks: 1 = {a}, 2 = {b}, 3 = {a, b}
    assert w2.tolist() == [[0, 0.5, -0.5, 0.5], [0, -0.5, 0.5, 0.5]]
    w3 = shapley_weights(3)  # modality 2 ("text"): (f(avt) - f(av)) / 3 + (f(at) - f(a) + f(vt) - f(v)) / 6 + f(t) / 3
    expected = [0, -1 / 6, -1 / 6, -1 / 3, 1 / 3, 1 / 6, 1 / 6, 1 / 3]
    assert w3[2].tolist() == pytest.approx(expected)
    assert w3.sum(dim=0).tolist() == pytest.approx([0] * 7 + [1])  # outputs sum to f(all)


def test_agm_mono_outputs_from_zeroed_inputs():
    method = AGM(AGMParams(), "classification", ["a", "b"])
    stub = Stub().train()
    method.setup(MethodContext(model=stub, optimizer=None, data=None, device=torch.device("cpu"), config=None))
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    full = stub({"a": a, "b": b}).logits
    mono = method.mono_logits({"a": a, "b": b}, full)
    assert mono[0].tolist() == (a + 0.5 * a * b).tolist()  # f(a, 0) / 2 + (f(a, b) - f(0, b)) / 2
    assert mono[1].tolist() == (2 * b + 0.5 * a * b).tolist()
    assert stub.modes == [True, False, False] and stub.training


def test_agm_scores_and_coefficient_formula():
    labels = torch.tensor([0, 0])
    logits = torch.stack([logits_with_true_class_probability([0.5, 0.5]),
                          logits_with_true_class_probability([0.25, 1e-12])])
    scores = mono_scores(logits, labels, "classification")
    assert scores.tolist() == pytest.approx([math.log(2), (math.log(4) + math.log(1e8)) / 2], rel=1e-5)
    current, running = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5])
    coefficients = agm_coefficients(current, running, alpha=2.5, clip=10.0)
    expected = [math.exp(2.5 * (1 - math.e)), math.exp(2.5 * (1 - math.exp(-1)))]
    assert coefficients.tolist() == pytest.approx(expected, rel=1e-5)
    clipped = agm_coefficients(torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0]), alpha=1.0, clip=0.5)
    assert clipped[0].item() == pytest.approx(math.exp(0.5))
    three = agm_coefficients(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), alpha=1.0, clip=10.0)
    assert three[0].item() == pytest.approx(math.exp(1 - math.exp(2.5 - 1.0)), rel=1e-5)


def test_agm_clips_the_gradient_norm_only_when_a_fusion_gradient_is_large():
    encoder, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    encoder.grad, head.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
    clip_large_gradients([encoder, head], [head], limit=1.0)
    assert encoder.grad.tolist() == [3.0, 4.0] and head.grad.tolist() == [0.5]  # head entries within 1: no clip
    head.grad = torch.tensor([12.0])  # total norm 13
    clip_large_gradients([encoder, head], [head], limit=1.0)
    assert encoder.grad.tolist() == pytest.approx([3 / 13, 4 / 13], rel=1e-4)
    assert head.grad.tolist() == pytest.approx([12 / 13], rel=1e-4)


def test_agm_refuses_too_many_modalities():
    with pytest.raises(G2DError, match="method.agm.max_modalities"):
        AGM(AGMParams(max_modalities=2), "classification", ["a", "b", "c"])


# PMR

def test_pmr_prototypes_are_class_means_with_momentum(tmp_path):
    context = tiny_context(tmp_path)
    method = PMR(PMRParams(momentum=0.2), "classification", ["pix", "mor"])
    method.setup(context)
    method.on_epoch_start(0)
    train = to_device(context.data.splits["train"], context.data, context.device)
    with torch.no_grad():
        features = context.model(train).features
    for m in ("pix", "mor"):
        for c in (0, 7):
            expected = features[m][train["label"] == c].mean(dim=0)
            assert torch.allclose(method.prototypes[m][c], expected, atol=1e-5)
    first = {m: p.clone() for m, p in method.prototypes.items()}
    with torch.no_grad():
        for param in context.model.encoders["pix"].parameters():
            param.mul_(1.5)
        fresh = context.model(train).features["pix"][train["label"] == 3].mean(dim=0)
    method.on_epoch_start(1)
    assert torch.allclose(method.prototypes["pix"][3], 0.8 * fresh + 0.2 * first["pix"][3], atol=1e-5)


def test_pmr_loss_by_hand():
    # One sample of class 0, two classes, one-dimensional features.
    features = {"a": torch.tensor([[0.0]]), "b": torch.tensor([[1.0]])}
    prototypes = {"a": torch.tensor([[0.0], [4.0]]), "b": torch.tensor([[0.0], [2.0]])}
    fused = torch.tensor([[1.0, 0.0]])
    output = ModelOutput(features=features, logits=fused, modality_logits={})
    labels = torch.tensor([0])

    def softmax_neg(d0, d1):
        d0, d1 = math.sqrt(d0**2 + 1e-8), math.sqrt(d1**2 + 1e-8)
        z = math.exp(-d0) + math.exp(-d1)
        return math.exp(-d0) / z, math.exp(-d1) / z

    pa = softmax_neg(0.0, 4.0)  # a: close to its class prototype, dominant
    pb = softmax_neg(1.0, 1.0)  # b: halfway, p = 1/2
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    beta = min(max(pa[0] / pb[0] - 1, 0), 1)  # b's PCE weight, and a's PER weight (k = 2)
    entropy_a = -sum(p * math.log(p) for p in pa)
    method = PMR(PMRParams(alpha=0.5, mu=0.3, entropy_epochs=2), "classification", ["a", "b"])
    method.prototypes = prototypes
    method.modulating, method.entropy = method.window(0)
    loss, terms = method.loss(output, {"label": labels}, None)
    expected = ce + 0.5 * beta * -math.log(pb[0]) - 0.3 * beta * entropy_a
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    method.modulating, method.entropy = method.window(2)  # past the entropy epochs: PCE only
    assert method.loss(output, {"label": labels}, None)[0].item() == pytest.approx(ce + 0.5 * beta * math.log(2), rel=1e-5)
    method.modulating, method.entropy = method.window(101)  # past the modulation window: the task loss alone
    assert method.loss(output, {"label": labels}, None)[0].item() == pytest.approx(ce, rel=1e-6)


def test_pmr_needs_classification():
    with pytest.raises(G2DError, match="method.name: pmr supports classification only"):
        build_method({"name": "pmr"}, "regression", ["a", "b"])


# MSES

def val_losses(pix, mor):
    return {"per_modality": {"pix": {"loss": pix}, "mor": {"loss": mor}}}


def test_mses_stops_a_plateaued_modality_and_restores_its_best_encoder(tmp_path):
    context = tiny_context(tmp_path)
    method = MSES(MSESParams(patience=2, smoothing=0.0), "classification", ["pix", "mor"])
    method.setup(context)
    mor = context.model.encoders["mor"]
    best = None
    for epoch, mor_loss in enumerate([1.0, 0.9, 0.95, 0.93, 0.91]):
        with torch.no_grad():
            for param in mor.parameters():
                param.add_(0.01)  # stands in for an epoch of training
        if epoch == 1:
            best = {k: v.clone() for k, v in mor.state_dict().items()}
        method.on_epoch_end(epoch, val_losses(1.0 - 0.1 * epoch, mor_loss))
        assert method.stopped == {"pix": False, "mor": epoch == 4}  # 4 - 1 > patience 2
    method.on_epoch_start(5)
    assert all(torch.equal(v, best[k]) for k, v in mor.state_dict().items())
    assert method.training_flags.tolist() == [1.0, 0.0]
    before = {n: p.detach().clone() for n, p in context.model.named_parameters()}
    lrs = [g["lr"] for g in context.optimizer.param_groups]
    terms = method.train_step(first_batch(context), 5)
    after = dict(context.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("encoders.mor."))
    assert not torch.equal(after["encoders.pix.net.0.weight"], before["encoders.pix.net.0.weight"])
    assert [g["lr"] for g in context.optimizer.param_groups] == lrs
    assert terms["training/mor"].item() == 0.0


def test_mses_smooths_with_an_exponential_average(tmp_path):
    method = MSES(MSESParams(patience=1, smoothing=0.5), "classification", ["pix", "mor"])
    method.setup(tiny_context(tmp_path))
    for epoch, loss in enumerate([1.0, 0.6, 0.9]):
        method.on_epoch_end(epoch, val_losses(loss, loss))
    assert method.smoothed["pix"] == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 0.6) + 0.5 * 0.9)
    assert method.best_epoch["pix"] == 1 and not method.stopped["pix"]


# MSLR

def test_mslr_dynamic_rate_on_the_param_groups(tmp_path):
    context = tiny_context(tmp_path)
    method = MSLR(MSLRParams(window=2, lr_scale={"mor": 2.0}), "classification", ["pix", "mor"])
    method.setup(context)
    for epoch, (pix, mor) in enumerate([(0.5, 0.4), (0.7, 0.4), (0.9, 0.2)]):
        method.on_epoch_end(epoch, {"per_modality": {"pix": {"accuracy": pix}, "mor": {"accuracy": mor}}})
    assert method.factors == pytest.approx({"pix": 0.9 / 0.6, "mor": 2.0 * 0.2 / 0.4})
    seen = {}
    original = context.optimizer.step

    def recording_step(*args, **kwargs):
        seen.update({g["name"]: g["lr"] for g in context.optimizer.param_groups})
        return original(*args, **kwargs)

    context.optimizer.step = recording_step
    terms = method.train_step(first_batch(context), 3)
    base = context.config.optim.lr
    assert seen == pytest.approx({"encoder:pix": base * 1.5, "encoder:mor": base * 1.0, "fusion": base})
    assert all(g["lr"] == base for g in context.optimizer.param_groups)
    assert terms["lr_scale/pix"].item() == pytest.approx(1.5)


def test_mslr_keep_strategy_holds_the_given_scales(tmp_path):
    method = MSLR(MSLRParams(strategy="keep", lr_scale={"pix": 0.5}), "classification", ["pix", "mor"])
    method.setup(tiny_context(tmp_path))
    method.on_epoch_end(0, {"per_modality": {"pix": {"accuracy": 0.1}, "mor": {"accuracy": 0.9}}})
    assert method.factors == {"pix": 0.5, "mor": 1.0}
    with pytest.raises(G2DError, match="method.mslr.lr_scale.audio"):
        MSLR(MSLRParams(lr_scale={"audio": 2.0}), "classification", ["pix", "mor"])


# End to end

@pytest.mark.parametrize("modalities", ["[pix,mor]", "[pix,fou,mor]"])
@pytest.mark.parametrize("name", METHODS)
def test_runs_end_to_end(tmp_path, name, modalities):
    metrics = run(tiny_config(tmp_path, "run", f"method.name={name}", f"dataset.modalities={modalities}"))
    assert metrics["method"] == name
    assert list(metrics["test"]["per_modality"]) == modalities.strip("[]").split(",")
    assert 0.5 < metrics["test"]["multimodal"]["accuracy"] <= 1.0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 3 and all(math.isfinite(v) for r in history for v in r["train"].values())


@pytest.mark.parametrize("name", ["ogm_ge", "agm", "mses"])
def test_smp_multiplies_the_method_coefficient(tmp_path, monkeypatch, name):
    """Ranked SMP freezes pix (the more confident teacher) for the 3 epochs of its phase (the run stopped
    there: phases as long as training are refused): its encoder never moves, while mor's gradients keep
    the method's own coefficient (times SMP's 1)."""
    config = tiny_config(tmp_path, name, f"method.name={name}", "smp.enabled=true", "smp.tau=[3]", "trainer.epochs=4",
                         "teachers.epochs=3")
    train_teachers(config)  # before the student's run, which stops after its 3rd epoch
    run_interrupted(monkeypatch, config, after_epochs=3)
    data = load_dataset(config.dataset)
    seed_everything(config.seed)
    initial = MultimodalModel(data.modalities, config.model, output_size(data)).state_dict()
    final = load_file(str(tmp_path / name / "checkpoints" / "last.safetensors"))
    pix = [k for k in initial if k.startswith("encoders.pix.")]
    assert pix and all(torch.equal(final[k], initial[k]) for k in pix)
    assert not torch.equal(final["encoders.mor.net.0.weight"], initial["encoders.mor.net.0.weight"])
    history = torch.load(tmp_path / name / "checkpoints" / "last_state.pt", weights_only=True)["state"]["history"]
    assert [r["train"]["kappa/pix"] for r in history] == [0.0] * 3
    mor = [r["train"]["kappa/mor"] for r in history]
    assert all(k > 0 for k in mor)
    if name == "mses":  # no coefficient of its own
        assert mor == [1.0] * 3


def test_ogm_ge_without_smp_uses_its_own_fractional_coefficient(tmp_path):
    run(tiny_config(tmp_path, "ogm", "method.name=ogm_ge"))
    history = json.loads((tmp_path / "ogm" / "history.json").read_text())
    pix = [r["train"]["kappa/pix"] for r in history]
    assert all(0.0 < k < 1.0 for k in pix)


def test_mses_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """mor stops after epoch 1 and is restored at the start of epoch 2: the crash falls between the two."""
    extra = ["method.name=mses", "method.mses.patience=0", "trainer.epochs=4"]
    whole = run(tiny_config(tmp_path, "whole", *extra))
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [r["train"]["training/mor"] for r in history] == [1.0, 1.0, 0.0, 0.0]
    run_interrupted(monkeypatch, tiny_config(tmp_path, "split", *extra))
    resumed = run(tiny_config(tmp_path, "split", *extra, "trainer.resume=true"))
    for name in ("last.safetensors", "best.safetensors"):
        assert (tmp_path / "whole" / "checkpoints" / name).read_bytes() == \
               (tmp_path / "split" / "checkpoints" / name).read_bytes(), name
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize("name", METHODS)
def test_steps_make_no_host_synchronization(tmp_path, monkeypatch, name):
    base = [f"method.name={name}", "trainer.epochs=1"]
    few = count_host_reads(monkeypatch, tiny_config(tmp_path, "few", *base, "trainer.batch_size=128"))
    many = count_host_reads(monkeypatch, tiny_config(tmp_path, "many", *base, "trainer.batch_size=16"))
    assert few == many
