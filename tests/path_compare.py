"""Lock-step comparison of two training paths (the fast one against the reference) on the same batches.

Both sides are built like ``g2d.runs.experiment.run`` builds a run (same seeds, so the same initial
weights), through the public ``prepare_training``, and are driven like ``fit`` drives one: epoch
hooks, ``path.batches``/``path.step``, a StepLR scheduler, validation for ``on_epoch_end``.
Before every step the fast side's weights and buffers are set to the reference side's, so each
step is compared from the same state: differences do not compound, and the tolerances below are
those of one step. With plain SGD (no momentum, no weight decay) a step moves each parameter by
``-lr * gradient``, so the per-encoder update is the per-encoder gradient, scale included.

Used by ``tests/test_cuda.py`` on a GPU and by ``tests/test_gpu_check.py`` on the CPU.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

import torch

from g2d.config import ExperimentConfig, load_config
from g2d.core.smp import Modulator
from g2d.data.base import Batches, ModalitySpec, MultimodalData
from g2d.data.feed import INDEX_KEY
from g2d.methods import build_method
from g2d.methods.base import Method
from g2d.methods.build import build_model
from g2d.models.multimodal import MultimodalModel
from g2d.training.engine import TeacherEnsemble, prepare_training, seed_everything
from g2d.training.evaluate import evaluate
from g2d.training.fast import TrainingPath
from g2d.training.teachers import teacher_model_config

CLASSES = 10
BATCH = 16
STEPS_PER_EPOCH = 8
# A few dozen steps crossing an SMP phase change (after epoch 1) and a learning-rate step (after
# epoch 2): three capture keys for a method whose own capture key does not change.
EPOCHS = 4
SCHEDULE = ["trainer.epochs=4", "smp.enabled=true", "smp.schedule=ranked", "smp.tau=[2]", "optim.lr_step=3",
            "optim.lr_gamma=0.1"]
# Plain SGD, so that an update is -lr * gradient; OGM-GE's noise is random, so it is off.
COMMON = ["model.encoder.name=resnet18", "model.encoder.width=8", f"trainer.batch_size={BATCH}",
          "trainer.eval_batch_size=64", "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.0",
          "optim.weight_decay=0.0", "method.ogm_ge.ge=false", "seed=0", *SCHEDULE]
# Methods that refuse SMP run without it (only the learning-rate step changes their capture key).
WITHOUT_SMP = {"reconboost": "schedules the modalities itself, one per stage, and refuses SMP"}
# Ranked SMP freezes the more confident modality first: "image" here.
DATASET_CONFIDENCE = (0.3, 0.7)


@dataclass(frozen=True)
class Tolerance:
    """How far one fast step may be from the reference step taken from the same state.

    Loss terms: ``|fast - ref| <= loss_rtol * |ref| + loss_atol`` at every step; the training
    accuracy within ``accuracy_atol`` (a near-tie may flip one sample's argmax). Per-group
    updates (each encoder, the fusion): the ratio of norms ``|fast| / |ref|`` within
    ``[1/ratio_median, ratio_median]`` for the median over steps (the scale: a lost or doubled
    factor moves it) and within ``[1/ratio_any, ratio_any]`` at every step; the cosine at least
    ``cosine_median`` for the median and ``cosine_any`` at every step. A group the reference
    leaves in place (SMP froze it) must not move at all.
    """

    loss_rtol: float
    loss_atol: float
    accuracy_atol: float
    ratio_median: float
    ratio_any: float
    cosine_median: float
    cosine_any: float


TOLERANCES = {
    # The same fp32 arithmetic on the CPU (teacher cache, foreach SGD, index-carrying feed):
    # only summation order may differ.
    "cpu-fp32": Tolerance(1e-5, 1e-7, 0.0, 1.0001, 1.001, 0.99999, 0.9999),
    # CUDA, fp32 on both paths: convolutions may run in TF32 on both (cuDNN's default) with
    # other algorithms on the fast path (autotuned, channels_last); BatchNorm's backward
    # cancellation amplifies that rounding in conv gradients.
    "cuda-fp32": Tolerance(5e-3, 1e-5, 1.01 / BATCH, 1.03, 1.25, 0.995, 0.95),
    # bf16 autocast against fp32: loss terms to bf16 rounding; conv gradients through BatchNorm
    # differ by 20-50 % in norm near initialization while pointing the same way (measured on
    # the CPU, docs/performance.md), so single steps get wide bounds and the median the scale.
    "bf16": Tolerance(3e-2, 1e-3, 2.01 / BATCH, 1.15, 2.0, 0.9, 0.5),
}


@dataclass
class Side:
    """One path's run: what ``fit`` would hold."""

    model: MultimodalModel
    method: Method
    data: MultimodalData
    path: TrainingPath
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    teachers: TeacherEnsemble
    config: ExperimentConfig


@dataclass
class StepComparison:
    """One step of both paths from the same state."""

    epoch: int
    step: int
    terms: dict[str, tuple[float, float]]  # name -> (reference, fast)
    norms: dict[str, tuple[float, float]]  # group -> (reference update norm, fast update norm)
    cosines: dict[str, float]  # group -> cosine of the two updates (nan when either is zero)


@dataclass
class Report:
    """Worst and median deviations seen, per quantity, for the record the GPU check brings back."""

    steps: int = 0
    worst_loss_rel: dict[str, float] = field(default_factory=dict)
    median_ratio: dict[str, float] = field(default_factory=dict)
    extreme_ratio: dict[str, float] = field(default_factory=dict)
    median_cosine: dict[str, float] = field(default_factory=dict)
    min_cosine: dict[str, float] = field(default_factory=dict)


def synthetic_data(modalities: int = 2, rows: int = BATCH * STEPS_PER_EPOCH, seed: int = 0) -> MultimodalData:
    """AV-MNIST-like uint8 images (``audio`` 1x32x32, ``image`` 1x28x28, more ``image<i>``), 10 classes.

    The label is written into each modality's first pixels, so models learn and losses fall.
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = {"audio": (1, 32, 32), "image": (1, 28, 28)}
    shapes.update({f"image{i}": (1, 28, 28) for i in range(2, modalities)})

    def split(n: int) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (n,), generator=generator)
        tensors = {"label": labels}
        for name, shape in shapes.items():
            values = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
            values[:, 0, :4, :4] = (labels * 25).to(torch.uint8)[:, None, None]
            tensors[name] = values
        return tensors

    return MultimodalData(
        name="synthetic", task="classification", num_classes=CLASSES,
        modalities={name: ModalitySpec("image", shape, 1 / 255) for name, shape in shapes.items()},
        splits={"train": split(rows), "val": split(64), "test": split(64)},
    )


def config_for(method: str, *extra: str) -> ExperimentConfig:
    smp = ["smp.enabled=false"] if method in WITHOUT_SMP else []
    return load_config(None, [*COMMON, *smp, f"method.name={method}", *extra])


def build_side(config: ExperimentConfig, data: MultimodalData, device: torch.device,
               teachers: TeacherEnsemble) -> Side:
    """Model, method, SMP and training path as ``run`` prepares them; ``teachers`` are copied."""
    modalities = list(data.modalities)
    teachers = copy.deepcopy(teachers)
    seed_everything(config.seed)
    method = build_method(config.method, data.task, modalities)
    model = build_model(data.modalities, config.model, data.num_classes, method)
    modulator = None
    if config.smp.enabled:
        modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in modalities}, config.trainer.epochs)
        confidence = torch.linspace(DATASET_CONFIDENCE[0], DATASET_CONFIDENCE[1], len(modalities))
        modulator.set_dataset_confidence(confidence)
    batches = Batches(data.splits["train"], config.trainer.batch_size, shuffle=True, seed=config.seed, drop_last=True)
    optimizer, path = prepare_training(model, method, data, config, device, batches, teachers, modulator)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.optim.lr_step, gamma=config.optim.lr_gamma)
    return Side(model, method, data, path, optimizer, scheduler, teachers, config)


def random_teachers(config: ExperimentConfig, data: MultimodalData) -> TeacherEnsemble:
    """Untrained teachers made confident (heads x10), as trained ones are, from a fixed seed."""
    torch.manual_seed(1)
    teachers = TeacherEnsemble({m: MultimodalModel({m: s}, teacher_model_config(config, m), data.num_classes)
                                for m, s in data.modalities.items()})
    with torch.no_grad():
        for teacher in teachers.teachers.values():
            for parameter in teacher.fusion.parameters():
                parameter.mul_(10.0)
    return teachers


def groups(model: MultimodalModel) -> dict[str, list[torch.nn.Parameter]]:
    """The parameter groups compared: each encoder, the fusion, and modules the method added."""
    found = {f"encoder:{m}": model.encoder_parameters(m) for m in model.modalities}
    found["fusion"] = list(model.fusion.parameters())
    if model.method_modules is not None:
        found["method"] = list(model.method_modules.parameters())
    return found


@torch.no_grad()
def copy_state(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Target's parameters and buffers set, in place (captured graphs keep their addresses), to source's."""
    target_state = dict(target.named_parameters()) | dict(target.named_buffers())
    for name, value in list(source.named_parameters()) + list(source.named_buffers()):
        target_state[name].copy_(value)


def same_rows(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], data: MultimodalData) -> bool:
    """Whether two paths' batches hold the same training rows (a fast path's may carry only indices)."""
    def rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if INDEX_KEY in batch:
            index = batch[INDEX_KEY].cpu()
            return {k: v[index] for k, v in data.splits["train"].items()}
        return {k: v.cpu() for k, v in batch.items()}

    a, b = rows(first), rows(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def flat(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in parameters])


def lockstep(reference: Side, fast: Side, epochs: int) -> list[StepComparison]:
    """Train both sides ``epochs`` epochs on the same batches, each step from the reference's state."""
    comparisons = []
    for epoch in range(epochs):
        for side in (reference, fast):
            side.method.on_epoch_start(epoch)
            side.model.train()
        pairs = zip(reference.path.batches(epoch), fast.path.batches(epoch), strict=True)
        for step, (reference_batch, fast_batch) in enumerate(pairs):
            assert same_rows(reference_batch, fast_batch, reference.data), f"epoch {epoch} step {step}: different rows"
            copy_state(reference.model, fast.model)
            before = {name: flat(params) for name, params in groups(reference.model).items()}
            reference_terms = {k: float(v) for k, v in reference.path.step(reference_batch, epoch).items()}
            fast_terms = {k: float(v) for k, v in fast.path.step(fast_batch, epoch).items()}
            assert reference_terms.keys() == fast_terms.keys(), (reference_terms.keys(), fast_terms.keys())
            norms, cosines = {}, {}
            fast_groups = groups(fast.model)
            for name, params in groups(reference.model).items():
                ref_update = flat(params) - before[name]
                fast_update = flat(fast_groups[name]) - before[name]
                norms[name] = (ref_update.norm().item(), fast_update.norm().item())
                denominator = ref_update.norm() * fast_update.norm()
                cosines[name] = (ref_update @ fast_update / denominator).item() if denominator > 0 else math.nan
            terms = {k: (reference_terms[k], fast_terms[k]) for k in reference_terms}
            comparisons.append(StepComparison(epoch, step, terms, norms, cosines))
        for side in (reference, fast):
            side.scheduler.step()
            val = evaluate(side.model, side.data, "val", side.path.device, side.config.trainer.eval_batch_size,
                           side.method)
            side.method.on_epoch_end(epoch, val)
    return comparisons


def check(comparisons: list[StepComparison], tolerance: Tolerance) -> tuple[list[str], Report]:
    """Every violation of ``tolerance`` as a line naming the step and quantity, and what was measured."""
    problems: list[str] = []
    report = Report(steps=len(comparisons))
    ratios: dict[str, list[float]] = {}
    cosines: dict[str, list[float]] = {}
    for c in comparisons:
        where = f"epoch {c.epoch} step {c.step}"
        for name, (ref, fast) in c.terms.items():
            gap = abs(fast - ref)
            relative = gap / abs(ref) if ref != 0 else (0.0 if gap == 0 else math.inf)
            report.worst_loss_rel[name] = max(report.worst_loss_rel.get(name, 0.0), relative)
            allowed = tolerance.accuracy_atol if name == "accuracy" else tolerance.loss_rtol * abs(ref) + tolerance.loss_atol
            if not gap <= allowed:
                problems.append(f"{where}: {name} {fast:.6g} against {ref:.6g}")
        for name, (ref, fast) in c.norms.items():
            if ref == 0 or fast == 0:
                if ref != fast:
                    problems.append(f"{where}: {name} moved by {fast:.3g} on the fast path and {ref:.3g} on the "
                                    "reference (one of them frozen)")
                continue
            ratio = fast / ref
            ratios.setdefault(name, []).append(ratio)
            cosines.setdefault(name, []).append(c.cosines[name])
            if not 1 / tolerance.ratio_any <= ratio <= tolerance.ratio_any:
                problems.append(f"{where}: {name} update norm ratio fast/reference {ratio:.4f}")
            if not c.cosines[name] >= tolerance.cosine_any:
                problems.append(f"{where}: {name} update cosine {c.cosines[name]:.4f}")
    for name, values in ratios.items():
        median = statistics.median(values)
        report.median_ratio[name] = median
        report.extreme_ratio[name] = max(values, key=lambda r: abs(math.log(r)))
        report.median_cosine[name] = statistics.median(cosines[name])
        report.min_cosine[name] = min(cosines[name])
        if not 1 / tolerance.ratio_median <= median <= tolerance.ratio_median:
            problems.append(f"{name}: median update norm ratio fast/reference {median:.4f} over {len(values)} steps")
        if not report.median_cosine[name] >= tolerance.cosine_median:
            problems.append(f"{name}: median update cosine {report.median_cosine[name]:.4f} over {len(values)} steps")
    return problems, report


def capture_problems(side: Side, steps: int, replays: int) -> list[str]:
    """What is wrong with a fast run's CUDA graph use after ``steps`` steps and ``replays`` replays.

    A capturable method must have been captured at least once per capture key (every epoch is
    one, see ``g2d.training.fast.capture_key``), without failure, and replayed for every step but the
    warm-up and capture ones; any other method never captured, with the reason logged in the
    plan's notes naming the method.
    """
    plan, graphed = side.path.plan, side.path.graphed
    phases = side.config.trainer.epochs
    if type(side.method).capturable:
        if not plan.cuda_graph or graphed is None:
            return [f"capturable method {side.method.name}: no CUDA graph path (plan notes: {plan.notes})"]
        problems = [f"capture failed: {graphed.failed}"] if graphed.failed is not None else []
        if graphed.captures < phases:
            problems.append(f"{graphed.captures} captures for {phases} capture keys")
        if replays < steps - 3 - 2 * graphed.captures:
            problems.append(f"{replays} replays in {steps} steps with {graphed.captures} captures")
        return problems
    problems = []
    if plan.cuda_graph or graphed is not None or replays:
        problems.append(f"method {side.method.name} does not declare itself capturable, yet graphs ran "
                        f"(plan {plan.cuda_graph}, {replays} replays)")
    if not any(side.method.name in note for note in plan.notes):
        problems.append(f"no note says why {side.method.name} runs eagerly: {plan.notes}")
    return problems
