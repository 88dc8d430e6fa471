"""CUDA-graph capture on the CPU, against an emulated graph that behaves as a real one does.

A real graph replays the kernels recorded at capture: Python does not run, so every host value
the step read (a flag, a number, which tensor an attribute pointed to) is the one it had at
capture, while tensors updated in place are read as they are now. ``FakeGraph`` replays the
recorded step with the method's, the modulator's and the optimizer's host state put back as it
was at capture, so a step that depends on host state that changed since is caught here: its
graphed run differs from the eager one. Every capturable method runs through it across SMP's
phase change, a learning-rate step and its own windows, and must match the eager run exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from typing import Any

import pytest
import torch

import g2d.training.engine as engine
import g2d.training.fast as fast
from g2d.config import load_config
from g2d.core.losses import task_loss
from g2d.core.smp import Modulator
from g2d.data.base import ModalitySpec, MultimodalData
from g2d.methods import METHODS, build_method
from g2d.methods.base import Method, TeacherOutputs
from g2d.models.multimodal import ModelOutput, MultimodalModel
from g2d.training.engine import TeacherEnsemble, fit
from g2d.training.teachers import teacher_model_config

CPU = torch.device("cpu")
CLASSES = 3
# Short windows so that within 4 epochs every method's host state changes: SMP's phase (tau 1),
# the learning rate (x0.1 after epoch 2), OGM-GE's and PMR's windows, MSES's stop, MSLR's rates.
SETTINGS = ["model.encoder.hidden=[8]", "trainer.batch_size=8", "trainer.eval_batch_size=20", "trainer.epochs=4",
            "trainer.fast=true", "trainer.progress=false", "smp.enabled=true", "smp.tau=[1]", "smp.schedule=dynamic",
            "optim.lr=0.1", "optim.lr_step=2", "method.ogm_ge.modulation_ends=1", "method.agm.modulation_ends=2",
            "method.pmr.modulation_ends=2", "method.pmr.entropy_epochs=1", "method.mses.patience=0",
            "method.mslr.window=1"]
CAPTURABLE = sorted(name for name, cls in METHODS.items() if cls.capturable)


def tiny_data(rows: int = 40) -> MultimodalData:
    """Two vector modalities, 3 classes; 40 rows so that each epoch ends with a partial batch."""
    generator = torch.Generator().manual_seed(0)

    def split() -> dict[str, torch.Tensor]:
        label = torch.randint(0, CLASSES, (rows,), generator=generator)
        return {"a": torch.randn(rows, 5, generator=generator) + label.unsqueeze(1),
                "b": torch.randn(rows, 4, generator=generator) + 0.2 * label.unsqueeze(1), "label": label}

    return MultimodalData(name="tiny", task="classification", num_classes=CLASSES,
                          modalities={"a": ModalitySpec("vector", (5,)), "b": ModalitySpec("vector", (4,))},
                          splits={s: split() for s in ("train", "val", "test")})


def frozen(value: Any) -> Any:
    """A copy of the containers and dataclasses that hold host values; tensors and other objects shared."""
    if isinstance(value, dict):
        return {key: frozen(item) for key, item in value.items()}
    if isinstance(value, list):
        return [frozen(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return copy.copy(value)
    return value


class HostState:
    """The host side of a step's objects at one moment, to be put back later."""

    def __init__(self, path: Any) -> None:
        method = path.method
        self.objects = [obj for obj in (method, method.ctx.modulator) if obj is not None]
        self.attributes = [{k: frozen(v) for k, v in vars(obj).items()} for obj in self.objects]
        self.optimizer = method.ctx.optimizer
        self.groups = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]

    def put_back(self) -> None:
        for obj, attributes in zip(self.objects, self.attributes):
            vars(obj).update({k: frozen(v) for k, v in attributes.items()})
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            group.update(saved)


class FakeGraph:
    """A CPU stand-in for ``torch.cuda.CUDAGraph``: the first replay after capture is the captured
    run itself; later replays run the recorded step on the static inputs with the host state of
    capture time put back (then today's restored), writing into the captured outputs."""

    capturing: "FakeGraph | None" = None

    def __init__(self) -> None:
        self.step = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.state: HostState | None = None
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        if self.replays == 1:
            return
        assert self.state is not None and self.step is not None
        now = HostState(self.state.path)
        self.state.put_back()
        try:
            for name, value in self.step().items():
                self.outputs[name].copy_(value)
        finally:
            now.put_back()


class FakeStream:
    def wait_stream(self, other: Any) -> None:
        pass


class RecordingGraphedStep(fast.GraphedStep):
    """``GraphedStep`` whose captures hand ``FakeGraph`` what it needs to replay."""

    def capture(self, batch, epoch):
        path = self.run.__self__
        state = HostState(path)
        state.path = path
        run = self.run

        def recorded(static_batch, static_epoch):
            outputs = run(static_batch, static_epoch)
            graph = FakeGraph.capturing
            if graph is not None:
                graph.step, graph.outputs, graph.state = (lambda: run(static_batch, static_epoch)), outputs, state
            return outputs

        self.run = recorded
        try:
            return super().capture(batch, epoch)
        finally:
            self.run = run


def emulate_cuda_graphs(monkeypatch, fail: bool = False) -> None:
    """Let the fast path capture on the CPU against ``FakeGraph``; ``fail`` makes every capture raise."""

    @contextlib.contextmanager
    def graph(cuda_graph, capture_error_mode="global"):
        FakeGraph.capturing = cuda_graph
        try:
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            yield
        finally:
            FakeGraph.capturing = None

    for name, value in {"Stream": FakeStream, "current_stream": FakeStream, "CUDAGraph": FakeGraph, "graph": graph,
                        "stream": lambda s: contextlib.nullcontext(), "synchronize": lambda *a: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(fast, "GraphedStep", RecordingGraphedStep)
    original = engine.plan_training

    def with_graphs(*args, **kwargs):
        plan = original(*args, **kwargs)
        plan.cuda_graph = plan.cuda_graph or args[2].capturable
        return plan

    monkeypatch.setattr(engine, "plan_training", with_graphs)


def train(tmp_path, method: Method, *extra: str, graphs: bool, monkeypatch=None, fail: bool = False):
    """fit on the tiny data with teachers and SMP; returns history, final weights and the training path summary."""
    config = load_config(None, [*SETTINGS, *extra])
    data = tiny_data()
    torch.manual_seed(0)
    teachers = TeacherEnsemble({m: MultimodalModel({m: s}, teacher_model_config(config, m), CLASSES)
                                for m, s in data.modalities.items()})
    model = MultimodalModel(data.modalities, config.model, CLASSES)
    model.method_modules = method.build_modules(model.feature_dims, model.num_outputs)
    modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in data.modalities}, config.trainer.epochs)
    if graphs:
        emulate_cuda_graphs(monkeypatch, fail)
    captures = {}
    original = fast.TrainingPath.summary

    def summary(path):
        captures["graphed"] = path.graphed
        return original(path)

    try:
        if graphs:
            monkeypatch.setattr(fast.TrainingPath, "summary", summary)
        result = fit(model, method, data, config, tmp_path / ("graph" if graphs else "eager"), teachers, modulator, CPU)
    finally:
        if graphs:
            monkeypatch.undo()
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return result.history, weights, captures.get("graphed")


def assert_same_runs(eager, graphed) -> None:
    for epoch, (a, b) in enumerate(zip(eager[0], graphed[0])):
        assert a["train"] == b["train"], f"epoch {epoch}: training terms differ"
        assert a["val"] == b["val"], f"epoch {epoch}: validation differs"
    for name, value in eager[1].items():
        assert torch.equal(value, graphed[1][name]), name


@pytest.mark.parametrize("name", CAPTURABLE)
def test_every_capturable_method_replays_what_its_eager_step_computes(tmp_path, monkeypatch, name):
    extra = [f"method.name={name}"]
    build = lambda: build_method(load_config(None, [*SETTINGS, *extra]).method, "classification", ["a", "b"])  # noqa: E731
    eager = train(tmp_path, build(), *extra, graphs=False)
    graphed = train(tmp_path, build(), *extra, graphs=True, monkeypatch=monkeypatch)
    step = graphed[2]
    assert step is not None and step.failed is None and step.captures >= 4  # at least one capture per epoch
    assert_same_runs(eager, graphed)


def test_learned_dlmg_weights_are_replayed_too(tmp_path, monkeypatch):
    extra = ["method.name=dlmg", "method.dlmg.strategy=learned"]
    build = lambda: build_method(load_config(None, [*SETTINGS, *extra]).method, "classification", ["a", "b"])  # noqa: E731
    assert_same_runs(train(tmp_path, build(), *extra, graphs=False),
                     train(tmp_path, build(), *extra, graphs=True, monkeypatch=monkeypatch))


class StepCounter(Method):
    """A capturable method that breaks the rule: its loss reads a host counter its step advances."""

    name = "counter"
    capturable = True

    def __init__(self) -> None:
        super().__init__(None, "classification", ["a", "b"])
        self.calls = 0

    def loss(self, output: ModelOutput, batch: dict, teachers: TeacherOutputs | None):
        self.calls += 1
        loss = task_loss(output.logits, batch["label"], self.task) * (1.0 + 0.1 * (self.calls % 3))
        return loss, {"task": loss.detach()}


def test_host_state_that_changes_between_steps_is_recaptured_and_named(tmp_path, monkeypatch, caplog):
    eager = train(tmp_path, StepCounter(), graphs=False)
    with caplog.at_level(logging.WARNING, logger="g2d.fast"):
        graphed = train(tmp_path, StepCounter(), graphs=True, monkeypatch=monkeypatch)
    assert_same_runs(eager, graphed)
    assert "reads host state that changes between steps (method.calls)" in caplog.text


def test_the_emulated_graph_catches_a_step_replayed_over_stale_host_state(tmp_path, monkeypatch):
    """Without the host state in the capture key (the key of an earlier design: epoch and optimizer),
    the counter's replays use the count of capture time, and the emulated graph shows the damage."""
    eager = train(tmp_path, StepCounter(), graphs=False)
    original = fast.capture_key
    monkeypatch.setattr(fast, "capture_key", lambda method, modulator, optimizer, epoch:
                        original(method, modulator, optimizer, epoch)[:2])
    graphed = train(tmp_path, StepCounter(), graphs=True, monkeypatch=monkeypatch)
    assert eager[0][0]["train"]["loss"] != graphed[0][0]["train"]["loss"]


def test_failed_capture_is_logged_and_training_goes_on_eagerly(tmp_path, monkeypatch, caplog):
    build = lambda: build_method({"name": "g2d"}, "classification", ["a", "b"])  # noqa: E731
    eager = train(tmp_path, build(), "method.name=g2d", graphs=False)
    with caplog.at_level(logging.WARNING, logger="g2d.fast"):
        graphed = train(tmp_path, build(), "method.name=g2d", graphs=True, monkeypatch=monkeypatch, fail=True)
    assert "CUDA graph capture failed (RuntimeError: operation not permitted" in caplog.text
    assert graphed[2].failed is not None and graphed[2].captures == 0
    assert_same_runs(eager, graphed)
