"""The fast training path on the CPU: same losses and gradients as the reference path, teacher
cache, feeds, switches and logged fallbacks. CUDA-graph capture against an emulated graph is in
tests/test_capture.py; capturing real kernels is checked on a GPU (``pytest -m cuda``)."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, count_host_reads

from g2d.cli import main
from g2d.config import load_config
from g2d.core.smp import Modulator
from g2d.data.base import Batches, ModalitySpec, MultimodalData
from g2d.data.feed import INDEX_KEY, DeviceFeed, HostFeed
from g2d.errors import G2DError
from g2d.methods import METHODS, build_method
from g2d.methods.base import Method
from g2d.methods.g2d import G2D
from g2d.models.multimodal import MultimodalModel
from g2d.runs.experiment import run
from g2d.training import engine
from g2d.training.engine import TeacherEnsemble, prepare_training
from g2d.training.fast import capture_key, plan_training
from g2d.training.teachers import teacher_model_config

CPU = torch.device("cpu")
CLASSES = 3
# The fp32 fast path (teacher cache, foreach SGD, index-carrying feed) must agree with the
# reference to float rounding: the cached teachers ran over the split in batches of another
# size, so BLAS may sum in another order; anything beyond that is a bug.
FP32_RTOL = 1e-5
# bf16 autocast: loss terms agree to bf16 rounding (measured <= 1.7e-2), the fusion heads' and
# MLP encoder's gradients within 15 % (measured <= 9.7 %: their inputs come from the bf16
# encoder). Conv-encoder gradients through BatchNorm agree less: bf16-rounded activation
# gradients lose most of their digits in BatchNorm's backward cancellation, so near
# initialization ResNet gradients differ from float64 by 20-50 % in norm (fp32: 1e-5) while
# pointing the same way; the whole conv encoder's gradient has cosine 0.905 here. See
# docs/performance.md. Real bugs (a wrong teacher row, a lost SMP coefficient, fp16 master
# weights) are off by far more, or are checked exactly.
BF16_LOSS_RTOL = 3e-2
BF16_DENSE_RTOL = 0.15
BF16_CONV_COSINE = 0.8
# Cosine alone cannot see a gradient off by a constant factor: the whole conv encoder's gradient
# norm must also agree (measured ratio 0.99; single tensors range 0.66-1.47).
BF16_CONV_NORM_RTOL = 0.2


def tiny_data(rows: int = 48, deterministic: bool = True) -> MultimodalData:
    """An image modality (uint8, scaled) and a vector modality, 3 classes, every split ``rows`` rows."""
    generator = torch.Generator().manual_seed(0)

    def split() -> dict[str, torch.Tensor]:
        return {
            "img": torch.randint(0, 256, (rows, 1, 32, 32), generator=generator, dtype=torch.uint8),
            "vec": torch.randn(rows, 6, generator=generator),
            "label": torch.randint(0, CLASSES, (rows,), generator=generator),
        }

    return MultimodalData(
        name="tiny", task="classification", num_classes=CLASSES,
        modalities={"img": ModalitySpec("image", (1, 32, 32), 1 / 255), "vec": ModalitySpec("vector", (6,))},
        splits={s: split() for s in ("train", "val", "test")}, deterministic=deterministic,
    )


def tiny_config(*extra: str):
    return load_config(None, ["model.encoder.width=4", "model.encoder.hidden=[8]", "trainer.batch_size=8",
                              "trainer.eval_batch_size=20", "trainer.epochs=4", "smp.tau=[2]", "optim.lr=0.1",
                              *extra])


def prepared(data: MultimodalData, *extra: str, confidence: list[float] | None = None):
    """Model, method, path and optimizer of a G²D + SMP run, built from seed 0 (the same weights every call)."""
    config = tiny_config(*extra)
    torch.manual_seed(0)
    teachers = TeacherEnsemble({m: MultimodalModel({m: s}, teacher_model_config(config, m), CLASSES)
                                for m, s in data.modalities.items()})
    with torch.no_grad():  # confident teachers, as trained ones are, rather than near-uniform ones
        for teacher in teachers.teachers.values():
            for head in teacher.fusion.heads.values():
                head.weight.mul_(10.0)
    model = MultimodalModel(data.modalities, config.model, CLASSES)
    method = build_method(config.method, data.task, list(data.modalities))
    modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in data.modalities}, config.trainer.epochs)
    if modulator.needs_dataset_confidence:  # img the more confident: SMP trains vec alone first
        modulator.set_dataset_confidence(torch.tensor(confidence or [0.7, 0.3]))
    batches = Batches(data.splits["train"], config.trainer.batch_size, shuffle=True, seed=0, drop_last=True)
    optimizer, path = prepare_training(model, method, data, config, CPU, batches, teachers, modulator)
    return model, path, optimizer, teachers


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def two_steps(data: MultimodalData, *extra: str, confidence=None):
    """A step in SMP's first phase (epoch 0), then one with every encoder training (epoch 2)."""
    model, path, _, _ = prepared(data, *extra, confidence=confidence)
    model.train()
    results = []
    for epoch in (0, 2):
        terms = path.step(next(iter(path.batches(epoch))), epoch)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((terms, grads))
    return results, model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_steps_match_reference_loss_and_gradients(precision):
    """G²D + SMP steps on the same batches: loss terms, SMP coefficients, every gradient, the updated weights."""
    common = ["smp.schedule=ranked", "smp.tau=[2]"]
    reference, ref_model = two_steps(tiny_data(), "trainer.reference=true", *common, confidence=[0.7, 0.3])
    fast, fast_model = two_steps(tiny_data(), "trainer.fast=true", f"trainer.precision={precision}", *common,
                                 confidence=[0.7, 0.3])
    for epoch, (ref_terms, ref_grads), (fast_terms, fast_grads) in zip((0, 2), reference, fast):
        assert ref_terms.keys() == fast_terms.keys() >= {"loss", "task", "feature", "logit", "kappa/img", "kappa/vec"}
        assert fast_terms["kappa/img"] == ref_terms["kappa/img"] == (0.0 if epoch == 0 else 1.0)
        for name in ("loss", "task", "feature", "logit"):
            assert fast_terms[name].dtype == torch.float32, name
            tolerance = FP32_RTOL if precision == "fp32" else BF16_LOSS_RTOL
            assert relative_error(fast_terms[name], ref_terms[name]) <= tolerance, (epoch, name)
        assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) > 60
        conv = [name for name in ref_grads if name.startswith("encoders.img.")]
        if epoch == 0:  # the confident modality's encoder is frozen in SMP's first phase
            assert all(ref_grads[n].abs().sum() == 0 and fast_grads[n].abs().sum() == 0 for n in conv)
        elif precision == "bf16":
            whole = [torch.cat([grads[n].flatten() for n in conv]) for grads in (fast_grads, ref_grads)]
            assert cosine(*whole) >= BF16_CONV_COSINE
            assert abs(whole[0].norm() / whole[1].norm() - 1) <= BF16_CONV_NORM_RTOL
        for name, grad in ref_grads.items():
            if precision == "fp32":
                assert relative_error(fast_grads[name], grad) <= FP32_RTOL, (epoch, name)
            elif name not in conv:
                assert relative_error(fast_grads[name], grad) <= BF16_DENSE_RTOL, (epoch, name)
    for (name, a), b in zip(ref_model.named_parameters(), fast_model.parameters()):
        assert b.dtype == torch.float32, name  # fp32 master weights
        if precision == "fp32":
            assert relative_error(b.detach(), a.detach()) <= FP32_RTOL, name


def test_fast_run_matches_reference_run_over_epochs(tmp_path, caplog):
    """fit end to end on mfeat: the fp32 fast path (teacher cache, foreach SGD) tracks the reference run."""
    common = [*TINY, "method.name=g2d", "smp.schedule=dynamic", "smp.tau=[1]", f"teachers.root={tmp_path / 't'}"]
    reference = run(load_config(None, [*common, "trainer.reference=true", f"out={tmp_path / 'ref'}"]))
    with caplog.at_level(logging.INFO, logger="g2d.fast"):
        fast = run(load_config(None, [*common, "trainer.fast=true", f"out={tmp_path / 'fast'}"]))
    assert reference["environment"]["training_path"]["path"] == "reference"
    path = fast["environment"]["training_path"]
    assert (path["path"], path["precision"], path["teacher_cache"], path["optimizer"]) == ("fast", "fp32", True, "foreach")
    assert "training path: fast" in caplog.text
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("ref", "fast")]
    for ref_epoch, fast_epoch in zip(*histories):
        for name, value in ref_epoch["train"].items():
            assert fast_epoch["train"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert fast["best_epoch"] == reference["best_epoch"]
    assert fast["test"]["multimodal"]["accuracy"] == pytest.approx(reference["test"]["multimodal"]["accuracy"], abs=0.01)


def test_teacher_cache_holds_each_rows_outputs_and_spares_teacher_passes():
    data = tiny_data()
    model, path, _, teachers = prepared(data, "trainer.fast=true")
    cache = path.teachers.cache
    assert cache is not None and cache.rows == data.size("train")
    rows = torch.tensor([5, 0, 47])
    expected = teachers({**{k: v[rows] for k, v in data.splits["train"].items()},
                         "img": data.splits["train"]["img"][rows].float() / 255})
    found = path.teachers({INDEX_KEY: rows})
    for m in data.modalities:
        torch.testing.assert_close(found.features[m], expected.features[m], rtol=FP32_RTOL, atol=1e-6)
        torch.testing.assert_close(found.logits[m], expected.logits[m], rtol=FP32_RTOL, atol=1e-6)
    calls = []
    for teacher in teachers.teachers.values():
        teacher.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    for batch in path.batches(0):
        path.step(batch, 0)
    assert calls == []  # a whole student epoch without a teacher forward pass


def test_random_pipeline_runs_teachers_every_batch_and_says_so(caplog):
    data = tiny_data(deterministic=False)
    with caplog.at_level(logging.WARNING, logger="g2d.fast"):
        model, path, _, teachers = prepared(data, "trainer.fast=true")
    assert path.teachers.cache is None and not path.summary()["teacher_cache"]
    assert "transforms training rows at random" in caplog.text
    calls = []
    teachers.teachers["img"].register_forward_hook(lambda *args: calls.append(1))
    model.train()
    for batch in path.batches(0):
        path.step(batch, 0)
    assert len(calls) == data.size("train") // 8


def test_reference_is_plain_and_overrides_fast(caplog):
    data = tiny_data()
    with caplog.at_level(logging.WARNING, logger="g2d.fast"):
        _, path, optimizer, teachers = prepared(data, "trainer.reference=true", "trainer.fast=true")
    assert path.summary()["path"] == "reference"
    assert path.teachers.ensemble is teachers and path.teachers.cache is None and path.teachers.dtype is None
    assert "trainer.reference=true overrides trainer.fast=true" in caplog.text
    assert not optimizer.param_groups[0]["foreach"]
    batch = next(iter(path.batches(0)))
    assert INDEX_KEY not in batch and set(batch) == {"img", "vec", "label"}


def test_fast_auto_is_the_reference_path_on_cuda_until_the_gpu_check_passed(monkeypatch, caplog):
    """Issue 20: auto must not put a first GPU run on a path no GPU has run; true opts in."""
    import g2d.training.fast as fast

    data, method = tiny_data(), G2D(G2D.Params(), "classification", ["img", "vec"])
    assert not plan_training(tiny_config(), CPU, method, data, teachers=object()).fast
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert fast.FAST_PATH_VERIFIED_ON_GPU is False
    plan = plan_training(tiny_config(), torch.device("cuda"), method, data, teachers=object())
    assert not plan.fast and plan.dtype is None and not plan.cuda_graph and not plan.teacher_cache
    assert plan.notes == [fast.UNVERIFIED_NOTE] and "trainer.fast=true" in fast.UNVERIFIED_NOTE
    opted = plan_training(tiny_config("trainer.fast=true"), torch.device("cuda"), method, data, teachers=object())
    assert opted.fast and opted.dtype == torch.bfloat16 and opted.cuda_graph and opted.notes == []
    monkeypatch.setattr(fast, "FAST_PATH_VERIFIED_ON_GPU", True)
    plan = plan_training(tiny_config(), torch.device("cuda"), method, data, teachers=object())
    assert plan.fast and plan.dtype == torch.bfloat16 and plan.channels_last and plan.cuda_graph and plan.teacher_cache
    assert plan.optimizer_options() == {"fused": True, "capturable": True} and plan.notes == []
    assert plan_training(tiny_config("trainer.fast=True"), CPU, method, data, None).optimizer_options() == {"foreach": True}


def test_cpu_precision_auto_is_bf16_only_where_native_and_only_once_verified(monkeypatch, caplog):
    """Issue 35: auto keeps today's CPU default (reference, fp32) until bf16's check passes, with one line
    saying how to opt in where the CPU has native bf16; then auto is the fast path, bf16 only where native."""
    import g2d.training.fast as fast

    data, method = tiny_data(), G2D(G2D.Params(), "classification", ["img", "vec"])
    native = {"avx512_bf16": True, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(native))
    assert fast.cpu_bf16_features() == ["avx512_bf16"]
    assert fast.FAST_PATH_VERIFIED_ON_CPU is False
    plan = plan_training(tiny_config(), CPU, method, data, None)
    assert not plan.fast and plan.dtype is None and plan.notes == []
    assert plan.hint is not None and "avx512_bf16" in plan.hint and "trainer.fast=true trainer.precision=bf16" in plan.hint
    opted = plan_training(tiny_config("trainer.fast=true"), CPU, method, data, None)
    assert opted.fast and opted.dtype is None  # precision auto: still fp32 until verified
    monkeypatch.setattr(fast, "FAST_PATH_VERIFIED_ON_CPU", True)
    plan = plan_training(tiny_config(), CPU, method, data, None)
    assert plan.fast and plan.dtype == torch.bfloat16 and plan.hint is None and plan.channels_last and plan.host_freeze
    fp32 = plan_training(tiny_config("trainer.precision=fp32"), CPU, method, data, None)
    assert fp32.dtype is None and not fp32.channels_last and fp32.host_freeze  # channels_last paid in bf16 only
    native["avx512_bf16"] = False  # a CPU that would emulate bf16: fp32, and asked-for bf16 is named as emulated
    assert fast.cpu_bf16_features() == []
    assert plan_training(tiny_config(), CPU, method, data, None).dtype is None
    asked = plan_training(tiny_config("trainer.precision=bf16"), CPU, method, data, None)
    assert asked.dtype == torch.bfloat16 and "no native bf16" in asked.notes[0]
    monkeypatch.setattr(fast, "FAST_PATH_VERIFIED_ON_CPU", False)
    assert plan_training(tiny_config(), CPU, method, data, None).hint is None


def test_the_opt_in_hint_is_logged_once_per_process(monkeypatch, caplog):
    import g2d.training.fast as fast

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    monkeypatch.setattr(fast, "HINTS_SAID", set())
    data = tiny_data()
    with caplog.at_level(logging.WARNING, logger="g2d.fast"):
        for _ in range(2):
            _, path, _, _ = prepared(data)
            path.log()
    assert caplog.text.count("computes bf16 natively (amx_bf16)") == 1


def test_capture_is_opt_in(monkeypatch):
    """Only methods that declare their step capturable are captured; a new method is not by default."""
    class Plain(Method):
        name = "plain"

    assert not Method.capturable and not Plain.capturable
    captured = {name for name, cls in METHODS.items() if cls.capturable}
    assert captured == {"joint", "g2d", "umt", "ume", "ogm_ge", "agm", "pmr", "dlmg", "mses", "mslr"}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda_fast = tiny_config("trainer.fast=true")
    plan = plan_training(cuda_fast, torch.device("cuda"), Plain(None, "classification", ["a", "b"]), tiny_data(), None)
    assert plan.fast and not plan.cuda_graph
    assert plan.notes == ["method 'plain' does not declare its step capturable (several backward passes or "
                          "alternating updates); its steps run eagerly (no CUDA graph)"]
    mla = build_method({"name": "mla"}, "classification", ["img", "vec"])
    assert not plan_training(cuda_fast, torch.device("cuda"), mla, tiny_data(), None).cuda_graph


def test_bad_switch_values_name_the_key():
    data, method = tiny_data(), G2D(G2D.Params(), "classification", ["img", "vec"])
    with pytest.raises(G2DError, match="trainer.fast"):
        plan_training(tiny_config("trainer.fast=maybe"), CPU, method, data, None)
    with pytest.raises(G2DError, match="trainer.precision"):
        plan_training(tiny_config("trainer.fast=true", "trainer.precision=fp16"), CPU, method, data, None)


def test_capture_key_changes_with_epoch_learning_rate_and_host_state():
    data = tiny_data()
    model, path, optimizer, _ = prepared(data, "trainer.fast=true", "smp.tau=[2]")
    method, modulator = path.method, path.method.ctx.modulator
    key = capture_key(method, modulator, optimizer, 1)
    assert capture_key(method, modulator, optimizer, 1) == key
    assert capture_key(method, modulator, optimizer, 2) != key  # a new epoch is always captured anew
    lr = optimizer.param_groups[0]["lr"]
    optimizer.param_groups[0]["lr"] = lr * 0.1
    assert capture_key(method, modulator, optimizer, 1) != key
    optimizer.param_groups[0]["lr"] = lr
    modulator.dataset_confidence.mul_(0.5)  # updated in place: the graph reads the same storage
    assert capture_key(method, modulator, optimizer, 1) == key
    modulator.dataset_confidence = modulator.dataset_confidence.clone()  # reassigned: a new tensor
    assert capture_key(method, modulator, optimizer, 1) != key
    method.params.temperature = 2.0  # a host number the step reads
    assert capture_key(method, modulator, optimizer, 1) != capture_key(method, None, optimizer, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_host_feed_yields_the_batches_of_batches_with_their_rows(workers, tmp_path):
    """Also over a memory-mapped array, as a loader that does not hold a split in memory would give."""
    values = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    np.save(tmp_path / "x.npy", values)
    mapped = torch.from_numpy(np.load(tmp_path / "x.npy", mmap_mode="r+"))
    tensors = {"x": mapped, "label": torch.arange(40)}
    batches = Batches(tensors, 6, shuffle=True, seed=3, drop_last=True)
    batches.set_epoch(2)
    expected = list(batches)
    fed = list(HostFeed(batches, CPU, workers=workers).epoch(2))
    assert len(fed) == len(expected) == 6
    for got, want in zip(fed, expected):
        assert torch.equal(got["x"], want["x"]) and torch.equal(got["label"], want["label"])
        assert torch.equal(got[INDEX_KEY], want["label"])  # label i sits in row i


def test_device_feed_gathers_the_same_rows():
    tensors = {"x": torch.randn(20, 2), "label": torch.arange(20)}
    batches = Batches(tensors, 4, shuffle=True, seed=1, drop_last=True)
    batches.set_epoch(1)
    expected = list(batches)
    feed = DeviceFeed(copy.copy(batches), CPU)
    fed = [feed.materialize(b) for b in feed.epoch(1)]
    assert [set(b) for b in fed] == [{"x", "label", INDEX_KEY}] * 5
    for got, want in zip(fed, expected):
        assert torch.equal(got["x"], want["x"]) and torch.equal(got[INDEX_KEY], want["label"])


def test_fast_path_makes_no_host_synchronization_per_step(tmp_path, monkeypatch):
    def config(name, batch_size):
        return load_config(None, [*TINY, "method.name=g2d", "smp.schedule=dynamic", "smp.tau=[1]", "trainer.epochs=1",
                                  "trainer.fast=true", f"trainer.batch_size={batch_size}", f"out={tmp_path / name}",
                                  f"teachers.root={tmp_path / 'teachers'}"])

    def as_on_cuda():  # SMP's freeze selects with torch.where, as it must under a CUDA graph
        original = engine.plan_training

        def planned(*args, **kwargs):
            plan = original(*args, **kwargs)
            plan.host_freeze = False
            return plan

        monkeypatch.setattr(engine, "plan_training", planned)

    run(config("warm", 64))
    as_on_cuda()
    few = count_host_reads(monkeypatch, config("few", 128))
    as_on_cuda()
    assert few == count_host_reads(monkeypatch, config("many", 16))
    # The CPU's default reads kappa once a step to leave frozen encoders out of it (free on the CPU).
    assert count_host_reads(monkeypatch, config("cpu-few", 128)) < count_host_reads(monkeypatch, config("cpu-many", 16))


def test_cli_prints_the_path_and_reference_flag_selects_the_reference_path(tmp_path, tiny_overrides, capsys):
    config = str(ROOT / "configs" / "mfeat.yaml")
    assert main(["train", config, *tiny_overrides, "trainer.epochs=1", "trainer.fast=true", "out=" + str(tmp_path / "f")]) == 0
    assert "g2d: training path: fast (precision=fp32" in capsys.readouterr().err
    assert main(["train", config, *tiny_overrides, "trainer.epochs=1", "trainer.fast=true", "--reference"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["environment"]["training_path"]["path"] == "reference"
    assert "trainer.reference=true overrides trainer.fast=true" in capsys.readouterr().err
