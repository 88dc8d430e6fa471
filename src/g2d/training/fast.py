"""The fast training path, and the reference path it is checked against.

``fit`` runs every step through a ``TrainingPath``. The reference path is the plain one:
batches gathered on the host, fp32, eager, teachers run on every batch. The fast path (on by
default on CUDA once verified there, ``trainer.fast``; until then opt in with ``trainer.fast=true``) changes how a step runs, never what it computes:

- bf16 autocast around the step (``trainer.precision``); weights, optimizer state and loss
  reductions stay fp32 (``g2d.core.losses`` upcasts), so no loss scaling is needed;
- channels_last weights and image inputs for the conv encoders (CUDA, and bf16 on the CPU);
- fused (CUDA) or foreach (CPU) optimizer steps; on the CPU, SMP's ``freeze`` leaves the frozen
  encoders out of the step (``SMP.host_freeze``) instead of copying them and selecting them back;
- frozen teachers in inference mode and the run's precision, their features and logits
  computed once per training row when the pipeline is deterministic (``g2d.training.teacher_cache``);
- the training split held on the GPU when it fits, else gathered ahead by worker threads
  into pinned memory (``g2d.data.feed``);
- on CUDA, the whole step (gather, conversion, forward, backward, SMP modulation, optimizer)
  captured as a CUDA graph and replayed (``trainer.cuda_graph``), for methods that declare
  their step capturable (``Method.capturable``, opt-in); the others run eagerly, with the
  reason logged.

A graph bakes in every host value the step read while it was captured. So the capture key is
the epoch, the optimizer's hyperparameters and ``host_state`` of the method and the SMP
modulator (numbers and flags by value, tensors by identity): when any of them changes, the
step is captured anew rather than replayed, and a method whose host state changes from step
to step is named in a warning (it should keep that state in device tensors updated in
place). SMP coefficients are device tensors throughout (``g2d.core.smp``). Anything asked
for that cannot be had is logged with its reason (``logging`` name ``g2d.fast``); nothing
falls back silently.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

import torch

from g2d.config import ExperimentConfig
from g2d.core.smp import Modulator
from g2d.data.augment import Augmenter
from g2d.data.base import Batches, MultimodalData, to_device
from g2d.data.feed import DeviceFeed, HostFeed, split_bytes
from g2d.errors import G2DError
from g2d.methods.base import Method, MethodContext
from g2d.training.teacher_cache import FrozenTeachers, TeacherCache, autocast_context

log = logging.getLogger("g2d.fast")

FAST_CHOICES = ("auto", "true", "false")
# Whether the CUDA suite has passed on a real GPU (docs/results/gpu.md). Until it has,
# ``trainer.fast=auto`` keeps CUDA runs on the verified reference path; the commit that records
# a passing GPU check sets this to True.
FAST_PATH_VERIFIED_ON_GPU = False
UNVERIFIED_NOTE = (
    "trainer.fast=auto runs the reference path (fp32, eager) on CUDA: the fast path (bf16, CUDA graphs, "
    "teacher cache) has not yet passed its check on a real GPU (docs/results/gpu.md); "
    "opt in with trainer.fast=true"
)
# Whether bf16 on the CPU has passed the training-level check (docs/results/bf16_check.md). Until it
# has, ``trainer.fast=auto`` keeps CPU runs on the reference path and ``trainer.precision=auto`` means
# fp32 there; a CPU that computes bf16 natively gets one line saying how to opt in. The commit that
# records a passing check sets this to True: auto then runs the fast path on the CPU, in bf16 where native.
FAST_PATH_VERIFIED_ON_CPU = False
CPU_OPT_IN_NOTE = (
    "this CPU computes bf16 natively ({features}): opt in to bf16 training with trainer.fast=true "
    "trainer.precision=bf16 (its speed varies by CPU and model: docs/performance.md); not the default: its "
    "training-level check did not pass (docs/results/bf16_check.md)"
)
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")
# Shares of the GPU's free memory that the resident training split and the teacher cache may
# take; the rest is left to activations, which a captured step keeps in its own pool.
DATA_SHARE = 0.4
CACHE_SHARE = 0.1
# Eager steps before the first capture: they create optimizer state, let cuDNN pick its
# algorithms and fill allocator pools, none of which may happen during capture.
WARMUP_STEPS = 3


@dataclass
class TrainingPlan:
    """What a run's training path switches on; ``notes`` say why anything asked for is off, ``hint``
    how to opt in to a faster path that ``auto`` does not choose yet (logged once per process)."""

    fast: bool
    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    fused_optimizer: bool = False
    cuda_graph: bool = False
    host_freeze: bool = False
    teacher_cache: bool = False
    augment_seed: int | None = None
    loader_workers: int = 0
    notes: list[str] = field(default_factory=list)
    hint: str | None = None

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments for the optimizer: fused kernels on CUDA, foreach on the CPU.

        Adam's step counter must live on the device for a capture (``capturable``); SGD has none.
        """
        if not self.fast:
            return {}
        if self.fused_optimizer:
            return {"fused": True, "capturable": True} if self.cuda_graph else {"fused": True}
        return {"foreach": True}


def choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    """A config string (OmegaConf turns YAML ``true`` into ``"True"``) checked against ``allowed``."""
    text = str(value).lower()
    if text not in allowed:
        raise G2DError(f"config key {key}: unknown value {value!r} (choose from {', '.join(allowed)})")
    return text


def cpu_bf16_features() -> list[str]:
    """The CPU's native bf16 instruction sets (AVX512-BF16, AMX-BF16); empty when bf16 would be emulated (slower than fp32).

    Read from PyTorch's cpuinfo (``torch.cpu.get_capabilities``), which also knows the OS
    enables AMX's tile state, and from ``/proc/cpuinfo``'s flags where that API is missing.
    """
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        capabilities = get()
        return [f for f in NATIVE_BF16_FEATURES if capabilities.get(f)]
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    return [f for f in NATIVE_BF16_FEATURES if f in flags]


def plan_training(
    config: ExperimentConfig, device: torch.device, method: Method, data: MultimodalData, teachers: Any
) -> TrainingPlan:
    """Decide the training path from the config, the device, the method and the data."""
    trainer = config.trainer
    augment_seed = config.seed if config.dataset.augment else None
    mode = choice(trainer.fast, FAST_CHOICES, "trainer.fast")
    precision = choice(trainer.precision, ("auto", *PRECISIONS), "trainer.precision")
    if trainer.reference:
        plan = TrainingPlan(fast=False, device=device, augment_seed=augment_seed)
        if mode == "true":
            plan.notes.append("trainer.reference=true overrides trainer.fast=true: fp32, eager, no caches")
        return plan
    cuda = device.type == "cuda"
    native = [] if cuda else cpu_bf16_features()
    if mode == "false":
        return TrainingPlan(fast=False, device=device, augment_seed=augment_seed)
    if mode == "auto" and not (FAST_PATH_VERIFIED_ON_GPU if cuda else FAST_PATH_VERIFIED_ON_CPU):
        if cuda:
            return TrainingPlan(fast=False, device=device, augment_seed=augment_seed, notes=[UNVERIFIED_NOTE])
        hint = CPU_OPT_IN_NOTE.format(features=", ".join(native)) if native else None
        return TrainingPlan(fast=False, device=device, augment_seed=augment_seed, hint=hint)
    # On the CPU a host read of SMP's kappa costs nothing and no step is captured, so ``freeze`` skips
    # the frozen encoders in the optimizer step instead of copying and selecting them back.
    plan = TrainingPlan(fast=True, device=device, fused_optimizer=cuda, host_freeze=not cuda, augment_seed=augment_seed)
    if precision == "auto":
        precision = "bf16" if cuda or (native and FAST_PATH_VERIFIED_ON_CPU) else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        plan.notes.append("this GPU has no bf16 support; the step runs in fp32")
        precision = "fp32"
    if precision == "bf16" and not cuda and not native:
        plan.notes.append("this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated, likely slower than "
                          "trainer.precision=fp32")
    plan.dtype = PRECISIONS[precision]
    # oneDNN's bf16 convolutions run faster on channels_last on the CPU (measured: docs/performance.md).
    plan.channels_last = cuda or plan.dtype == torch.bfloat16
    if trainer.cuda_graph and cuda:
        if method.capturable:
            plan.cuda_graph = True
        else:
            plan.notes.append(
                f"method {method.name!r} does not declare its step capturable (several backward passes or "
                "alternating updates); its steps run eagerly (no CUDA graph)"
            )
    if config.dataset.augment and plan.cuda_graph:
        plan.cuda_graph = False
        plan.notes.append("dataset.augment=true draws new crops every step; steps run eagerly (no CUDA graph)")
    if teachers is not None:
        if data.deterministic:
            plan.teacher_cache = True
        else:
            plan.notes.append(
                f"dataset {data.name} transforms training rows at random; teachers run on every batch (no cache)"
            )
    if cuda:
        plan.loader_workers = trainer.loader_workers
    return plan


def prepare_modules(plan: TrainingPlan, model: torch.nn.Module, teachers: Any) -> None:
    """channels_last conv weights for the fast path on CUDA (cuDNN autotuning is ``TrainingPath``'s,
    switched on for the run only)."""
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
        if teachers is not None:
            teachers.to(memory_format=torch.channels_last)


def free_gpu_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


SKIPPED_TYPES: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer, MethodContext, MultimodalData)


def host_state(objects: dict[str, Any], depth: int = 6) -> dict[str, Hashable]:
    """Every host value a step could read from ``objects`` (by attribute path): numbers, strings
    and flags by value, tensors by identity, storage, shape and dtype (an in-place update keeps
    them, a reassignment does not). Containers and dataclasses are walked; modules, optimizers,
    data and the method context are not (their tensors are updated in place)."""
    state: dict[str, Hashable] = {}

    def visit(path: str, value: Any, level: int) -> None:
        if value is None or isinstance(value, (bool, int, float, str)):
            state[path] = value
        elif isinstance(value, torch.Tensor):
            state[path] = ("tensor", id(value), value.data_ptr(), tuple(value.shape), value.dtype)
        elif level <= 0 or isinstance(value, SKIPPED_TYPES) or callable(value):
            return
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{path}[{key!r}]", item, level - 1)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{path}[{index}]", item, level - 1)
        elif hasattr(value, "__dict__"):
            for name, item in vars(value).items():
                visit(f"{path}.{name}", item, level - 1)

    for label, obj in objects.items():
        if obj is not None:
            visit(label, obj, depth)
    return state


def capture_key(method: Method, modulator: Modulator | None, optimizer: torch.optim.Optimizer, epoch: int) -> Hashable:
    """Everything on the host that a captured step bakes in: the epoch (SMP's phase and any
    epoch-dependent branch), the optimizer's hyperparameters (a scheduler changes the learning
    rate) and the host state of the method and the modulator."""
    hyper = tuple(
        tuple((name, value) for name, value in sorted(group.items()) if isinstance(value, (bool, int, float, str)))
        for group in optimizer.param_groups
    )
    state = host_state({"method": method, "modulator": modulator})
    return epoch, hyper, tuple(sorted(state.items()))


class GraphedStep:
    """A step function replayed from CUDA graphs with static input buffers.

    For each capture key (see ``capture_key``) the first steps run eagerly on a side stream
    (warm-up; they are real training steps), then one step is captured and replayed, and every
    later step with that key copies its batch into the static buffers and replays. A new key (a
    new epoch, a learning-rate decay, a method's host state changing) drops the graph and
    captures anew; keys that change within an epoch are named in a warning. A batch of another
    shape (an epoch's last, partial batch) runs eagerly. If a capture fails, the reason is
    logged once and every later step runs eagerly.
    """

    def __init__(self, run: Callable[[dict, int], dict], key: Callable[[int], Hashable], name: str = "",
                 warmup: int = WARMUP_STEPS):
        self.run = run
        self.key = key
        self.name = name
        self.warmup = warmup
        self.failed: str | None = None
        self.captures = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key: Hashable = None
        self.pending = warmup
        self.changes_in_epoch = 0
        self.unstable_logged = False
        self.static_inputs: dict[str, torch.Tensor] = {}
        self.static_outputs: dict[str, torch.Tensor] = {}
        self.side_stream = torch.cuda.Stream()

    def __call__(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        if self.failed is not None:
            return self.run(batch, epoch)
        key = self.key(epoch)
        if self.graph is None or key != self.graph_key:
            if key != self.graph_key:
                self.note_change(self.graph_key, key)
                self.release()
                self.graph_key = key
                self.pending = self.warmup if self.captures == 0 else 1
            if self.pending > 0:
                self.pending -= 1
                return self.eager_on_side_stream(batch, epoch)
            return self.capture(batch, epoch)
        if not self.matches(batch):
            return self.run(batch, epoch)
        for name, buffer in self.static_inputs.items():
            buffer.copy_(batch[name], non_blocking=True)
        self.graph.replay()
        return self.static_outputs

    def note_change(self, old: Hashable, new: Hashable) -> None:
        """Count capture keys that change inside one epoch; name the changing host values once."""
        if old is None or old[0] != new[0]:
            self.changes_in_epoch = 0
            return
        self.changes_in_epoch += 1
        if self.changes_in_epoch >= 2 and not self.unstable_logged:
            before, after = dict(old[2]), dict(new[2])
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            log.warning("fast path: the step of %s reads host state that changes between steps (%s); each change "
                        "re-captures the CUDA graph: keep such state in device tensors updated in place",
                        self.name or "this method", ", ".join(changed) or "optimizer settings")
            self.unstable_logged = True

    def matches(self, batch: dict[str, torch.Tensor]) -> bool:
        return batch.keys() == self.static_inputs.keys() and all(
            batch[k].shape == v.shape and batch[k].dtype == v.dtype for k, v in self.static_inputs.items()
        )

    def eager_on_side_stream(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        stream = self.side_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), warnings.catch_warnings():
            # Adam(capturable=True) warns when a step runs uncaptured, which warm-up steps do.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            outputs = self.run(batch, epoch)
        main = torch.cuda.current_stream()
        main.wait_stream(stream)
        for value in outputs.values():
            if value.is_cuda:
                # Made on the side stream, read on the main one: the allocator must not hand the
                # memory back to the side stream before the main stream is done with it.
                value.record_stream(main)
        return outputs

    def capture(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """Capture this batch's step into a graph, then replay it (capture itself runs nothing)."""
        self.static_inputs = {name: value.clone() for name, value in batch.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: loader threads may pin host memory while the main thread captures.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_outputs = self.run(self.static_inputs, epoch)
        except Exception as exc:  # any capture failure means: run eagerly, and say why
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("fast path: CUDA graph capture failed (%s); steps run eagerly from here", self.failed)
            self.release()
            torch.cuda.synchronize()
            return self.run(batch, epoch)
        self.graph = graph
        self.captures += 1
        graph.replay()
        return self.static_outputs

    def release(self) -> None:
        self.graph = None
        self.static_inputs = {}
        self.static_outputs = {}


class TrainingPath:
    """How ``fit`` gets its batches and runs its steps, for one run.

    ``batches(epoch)`` yields what ``step(batch, epoch)`` consumes. ``teachers`` are the run's
    frozen teachers, built once for either path (fp32 and run on every batch on the reference
    path; the run's precision and, when the data is deterministic, a per-row output cache on the
    fast path). ``close()`` restores what the path changed in the process (cuDNN autotuning).
    """

    def __init__(
        self,
        plan: TrainingPlan,
        method: Method,
        data: MultimodalData,
        batches: Batches,
        teachers: Any,
        modulator: Modulator | None,
        optimizer: torch.optim.Optimizer,
        cache_batch_size: int,
    ) -> None:
        self.plan = plan
        self.method = method
        self.data = data
        self.device = plan.device
        self.source = batches
        self.teachers = teachers
        self.feed: DeviceFeed | HostFeed | None = None
        self.graphed: GraphedStep | None = None
        self.placement = "host"
        self.cache_seconds = 0.0
        self.cudnn_benchmark = torch.backends.cudnn.benchmark
        self.augmenter = Augmenter(data.modalities, plan.augment_seed) if plan.augment_seed is not None else None
        self.epoch, self.epoch_step = 0, 0
        if teachers is not None:
            self.teachers = FrozenTeachers(teachers, self.device, plan.dtype)
            if plan.teacher_cache:
                self.teachers.cache = self.build_cache(cache_batch_size)
        if not plan.fast:
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick its kernels once
        # A split redrawn every epoch (data.redraw) is gathered from host memory, where it is replaced.
        if cuda and data.redraw is None and split_bytes(batches.tensors) <= DATA_SHARE * free_gpu_bytes(self.device):
            self.feed = DeviceFeed(batches, self.device)
            self.placement = "device"
        else:
            if cuda and data.redraw is None:
                plan.notes.append(
                    f"the training split ({split_bytes(batches.tensors) / 2**30:.1f} GiB) does not fit beside training "
                    f"on the GPU; {plan.loader_workers} loader threads feed it from pinned host memory"
                )
            self.feed = HostFeed(batches, self.device, workers=plan.loader_workers, pin=cuda)
            self.placement = "pinned" if cuda else "host"
        if plan.cuda_graph:
            self.graphed = GraphedStep(self.eager_step, lambda epoch: capture_key(method, modulator, optimizer, epoch),
                                       name=f"method {method.name!r}")

    def build_cache(self, batch_size: int) -> TeacherCache | None:
        started = time.perf_counter()
        cache = TeacherCache.build(self.teachers, self.data, "train", self.device, batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.cache_seconds = time.perf_counter() - started
        if self.device.type == "cuda" and cache.nbytes() > CACHE_SHARE * (free_gpu_bytes(self.device) + cache.nbytes()):
            self.plan.notes.append(
                f"teacher outputs ({cache.nbytes() / 2**30:.1f} GiB) are too large to keep on the GPU; "
                "teachers run on every batch (no cache)"
            )
            self.plan.teacher_cache = False
            return None
        return cache

    def close(self) -> None:
        """Put back the process-wide settings the fast path changed for this run."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        self.epoch, self.epoch_step = epoch, 0
        if self.feed is None:
            self.source.set_epoch(epoch)
            return iter(self.source)
        return self.feed.epoch(epoch)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step's float inputs on the device (channels_last images on the fast CUDA path)."""
        if self.feed is not None:
            batch = self.feed.materialize(batch)
        inputs = self.augment(to_device(batch, self.data, self.device))
        if self.plan.channels_last:
            for modality, spec in self.data.modalities.items():
                if spec.kind == "image" and inputs[modality].dim() == 4:  # channels_last is a 4-D layout
                    inputs[modality] = inputs[modality].contiguous(memory_format=torch.channels_last)
        return inputs

    def augment(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's visual modalities cropped and flipped (``dataset.augment``), the draws fixed by the
        seed, the epoch and the step within it; unchanged when augmentation is off."""
        if self.augmenter is None:
            return inputs
        self.epoch_step += 1
        return self.augmenter(inputs, self.epoch, self.epoch_step - 1)

    def eager_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        # Autocast's cast cache is off when steps are captured, as PyTorch asks for graphs:
        # a cached cast is a tensor that must not outlive the capture that made it.
        with autocast_context(self.device, self.plan.dtype, cache=self.graphed is None):
            return self.method.train_step(self.inputs(batch), epoch)

    def step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """One training step; returns the method's device tensors (static buffers when replayed)."""
        if not self.plan.fast:
            return self.method.train_step(self.augment(to_device(batch, self.data, self.device)), epoch)
        if self.graphed is not None:
            return self.graphed(batch, epoch)
        return self.eager_step(batch, epoch)

    def summary(self) -> dict[str, Any]:
        """What ran, for metrics.json: which path, precision, placement, caching and capture."""
        plan = self.plan
        return {
            "path": "fast" if plan.fast else "reference",
            "precision": "bf16" if plan.dtype == torch.bfloat16 else "fp32",
            "channels_last": plan.channels_last,
            "optimizer": "fused" if plan.fused_optimizer else ("foreach" if plan.fast else "default"),
            "teacher_cache": plan.teacher_cache,
            "teacher_cache_seconds": round(self.cache_seconds, 2),
            "data": self.placement if plan.fast else "host",
            "cuda_graph": plan.cuda_graph and (self.graphed is None or self.graphed.failed is None),
            "host_freeze": plan.host_freeze,
            "notes": list(plan.notes) + ([f"CUDA graph capture failed: {self.graphed.failed}"]
                                         if self.graphed is not None and self.graphed.failed else []),
        }

    def log(self) -> None:
        """One line saying what runs, plus one warning per thing asked for that is off."""
        summary = self.summary()
        if summary["path"] == "fast":
            log.info("training path: fast (%s)", ", ".join(f"{k}={v}" for k, v in summary.items() if k not in ("path", "notes")))
        for note in self.plan.notes:
            log.warning("fast path: %s", note)
        if self.plan.hint is not None and self.plan.hint not in HINTS_SAID:
            HINTS_SAID.add(self.plan.hint)
            log.warning("%s", self.plan.hint)


HINTS_SAID: set[str] = set()  # each opt-in hint once per process: a demo or sweep runs many runs
