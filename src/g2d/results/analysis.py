"""The paper's analyses of a trained run, and robustness to missing or noisy modalities.

Each analysis is a small function on tensors (tested against known answers); ``analyze_run``
rebuilds a finished run (``config.yaml``, ``checkpoints/best.safetensors`` and its teachers),
computes them all on the test split and writes ``RUN_DIR/analysis/``:

- confidence ratio per modality: the student's confidence (Eq. 5) in that modality over its
  teacher's (Fig. 6);
- feature alignment per modality: mean cosine between student and teacher features (Fig. 5), and the
  same for the untrained student (what alignment owes to a shared initialization);
- modality gap: distance between the centroids of the L2-normalized features of two modalities,
  and a 2-D PCA and t-SNE of them (Fig. 4);
- a linear probe per modality: a linear model fit on the frozen student encoder's training-split
  features and scored on test, beside that modality's score inside the model;
- Shapley values of the modalities and the score with every subset of modalities absent;
- the score with each modality's input corrupted by Gaussian noise at several levels;
- macro-F1 beside accuracy for classification.

"Absent" (see docs/analysis.md): late and sum fusion average (sum) only the present
modalities' heads; concat and the interaction fusions (FiLM, gated, cross-attention) get zero
features for an absent modality, which for concat drops that modality's share of the logits and
for the others is the fusion's own deactivation (how it forms per-modality logits). With no
modality present the prediction is the training split's label prior (mean target for regression).
Per-modality and fused logits are the fusion's own; methods with their own test-time heads
(MLA, UME, ReconBoost, MMPareto) are analysed through the fusion's heads.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from g2d.config import ExperimentConfig
from g2d.data.base import Batches, MultimodalData, to_device
from g2d.errors import G2DError
from g2d.folders import building, kind_of
from g2d.locks import folder_lock
from g2d.models.fusion import ConcatFusion, DeactivationFusion, LateFusion
from g2d.models.multimodal import MultimodalModel
from g2d.registry import Registry
from g2d.training import checkpoint

NOISE_LEVELS = (0.0, 0.5, 1.0, 2.0, 4.0)
EMBEDDING_POINTS = 300


def mean_cosine(student: Tensor, teacher: Tensor) -> float:
    """Mean over rows of the cosine between student and teacher features ``[N, d]`` (Fig. 5)."""
    if student.shape != teacher.shape:
        raise G2DError(f"feature alignment needs equal shapes, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    return F.cosine_similarity(student.double(), teacher.double(), dim=1).mean().item()


def confidence(logits: Tensor, labels: Tensor, task: str) -> float:
    """Eq. 5 over a whole split: mean probability of the true class (``1 - mean |error|`` on the
    [0, 1] target scale for regression)."""
    if task == "regression":
        return 1.0 - (torch.sigmoid(logits.double().squeeze(-1)) - labels.double()).abs().mean().item()
    return logits.double().softmax(dim=-1).gather(1, labels.view(-1, 1)).mean().item()


def macro_f1(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1; a class absent from both predictions and labels is skipped."""
    scores = []
    for c in range(num_classes):
        predicted, actual = predictions == c, labels == c
        true_positive = (predicted & actual).sum().item()
        support = predicted.sum().item() + actual.sum().item()
        if support:
            scores.append(2.0 * true_positive / support)
    return sum(scores) / len(scores) if scores else 0.0


def scores(logits: Tensor, labels: Tensor, task: str, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (classification) or MSE on the [0, 1] target scale (regression)."""
    if task == "regression":
        return {"mse": ((torch.sigmoid(logits.double().squeeze(-1)) - labels.double()) ** 2).mean().item()}
    predictions = logits.argmax(dim=-1)
    return {"accuracy": (predictions == labels).double().mean().item(),
            "macro_f1": macro_f1(predictions, labels, num_classes)}


def value_of(result: dict[str, float]) -> float:
    """Higher is better: accuracy, or minus MSE."""
    return result["accuracy"] if "accuracy" in result else -result["mse"]


def shapley_values(players: list[str], value: Callable[[frozenset[str]], float]) -> dict[str, float]:
    """Exact Shapley values: each player's marginal contribution ``v(S + m) - v(S)`` averaged
    with weight ``|S|! (k - |S| - 1)! / k!`` over the subsets S of the other players."""
    k = len(players)
    cache: dict[frozenset[str], float] = {}

    def v(subset: frozenset[str]) -> float:
        if subset not in cache:
            cache[subset] = value(subset)
        return cache[subset]

    result = {}
    for player in players:
        others = [p for p in players if p != player]
        total = 0.0
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for subset in itertools.combinations(others, size):
                base = frozenset(subset)
                total += weight * (v(base | {player}) - v(base))
        result[player] = total
    return result


def centroid_gap(first: Tensor, second: Tensor) -> float:
    """Modality gap: Euclidean distance between the centroids of the L2-normalized features."""
    if first.shape[1] != second.shape[1]:
        raise G2DError(f"modality gap needs equal feature sizes, got {first.shape[1]} and {second.shape[1]}")
    a = F.normalize(first.double(), dim=1).mean(dim=0)
    b = F.normalize(second.double(), dim=1).mean(dim=0)
    return (a - b).norm().item()


def pca_2d(x: Tensor) -> Tensor:
    """Rows of ``x`` projected on its first two principal components, ``[N, 2]`` (sign fixed so each
    component's largest-magnitude loading is positive, for reproducible pictures)."""
    centered = x.double() - x.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    components = vh[:2]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    projected = centered @ (components * signs).T
    if projected.shape[1] < 2:
        projected = torch.cat([projected, torch.zeros(len(x), 2 - projected.shape[1], dtype=projected.dtype)], dim=1)
    return projected


def tsne_2d(x: Tensor, seed: int = 0) -> Tensor:
    """A 2-D t-SNE (scikit-learn, Barnes-Hut), PCA-initialized and seeded."""
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        x.double().numpy())
    return torch.from_numpy(embedded)


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, task: str, num_classes: int
) -> dict[str, float]:
    """Fit a linear classifier (logistic regression) or regressor (ridge) on standardized frozen
    features and score it on test, as OGM-GE's protocol measures a unimodal encoder."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(train_x.double().numpy(), train_y.double().numpy())
        prediction = torch.from_numpy(model.predict(test_x.double().numpy())).clamp(1e-6, 1 - 1e-6)
        return scores(torch.logit(prediction).unsqueeze(-1), test_y, task, num_classes)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(train_x.double().numpy(), train_y.numpy())
    probabilities = torch.zeros(len(test_x), num_classes, dtype=torch.float64)
    probabilities[:, torch.as_tensor(model.classes_)] = torch.from_numpy(model.predict_proba(test_x.double().numpy()))
    return scores(probabilities.clamp_min(1e-12).log(), test_y, task, num_classes)


def fused_logits(model: MultimodalModel, features: dict[str, Tensor], present: frozenset[str], prior: Tensor) -> Tensor:
    """The fusion's logits with only ``present`` modalities (the module docstring's rule for
    "absent"); with none present, ``prior`` ``[K]`` for every row."""
    rows = len(next(iter(features.values())))
    if not present:
        return prior.expand(rows, -1)
    fusion = model.fusion
    if isinstance(fusion, LateFusion):
        return fusion.combine(torch.stack([fusion.heads[m](features[m]) for m in model.modalities if m in present]))
    kept = {m: f if m in present else torch.zeros_like(f) for m, f in features.items()}
    if isinstance(fusion, DeactivationFusion):
        return fusion.fuse(kept)
    if isinstance(fusion, ConcatFusion):
        return fusion(kept)[0]
    raise G2DError(f"model.fusion: no rule for an absent modality in fusion {type(fusion).__name__}")


def label_prior(data: MultimodalData) -> Tensor:
    """Logits of the best input-free prediction: log class frequencies on the training split
    (classification) or the logit of the mean training target (regression)."""
    labels = data.splits["train"]["label"]
    if data.task == "regression":
        return torch.logit(labels.double().mean().clamp(1e-6, 1 - 1e-6)).view(1).float()
    counts = torch.bincount(labels, minlength=data.num_classes).double()
    return (counts / counts.sum()).clamp_min(1e-12).log().float()


@dataclass
class Outputs:
    """Everything the analyses need from one pass over a split."""

    features: dict[str, Tensor]
    modality_logits: dict[str, Tensor]
    logits: Tensor
    labels: Tensor
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_logits: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def collect(
    model: MultimodalModel,
    data: MultimodalData,
    split: str,
    device: torch.device,
    batch_size: int,
    teachers: dict[str, nn.Module] | None = None,
    corrupt: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> Outputs:
    """Features and logits of the model (and teachers) over ``split``, on the CPU."""
    model.to(device).eval()
    for teacher in (teachers or {}).values():
        teacher.to(device).eval()
    parts: dict[str, list[Tensor]] = {}

    def keep(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value.float().cpu())

    for batch in Batches(data.splits[split], batch_size, shuffle=False):
        inputs = to_device(batch, data, device)
        if corrupt is not None:
            inputs = corrupt(inputs)
        output = model(inputs)
        keep("logits", output.logits)
        keep("labels", inputs["label"])
        for m in model.modalities:
            keep(f"feature/{m}", output.features[m])
            keep(f"logits/{m}", output.modality_logits[m])
        for m, teacher in (teachers or {}).items():
            taught = teacher(inputs)
            keep(f"teacher_feature/{m}", taught.features[m])
            keep(f"teacher_logits/{m}", taught.logits)
    joined = {name: torch.cat(values) for name, values in parts.items()}
    labels = joined["labels"].long() if data.task == "classification" else joined["labels"]
    return Outputs(
        features={m: joined[f"feature/{m}"] for m in model.modalities},
        modality_logits={m: joined[f"logits/{m}"] for m in model.modalities},
        logits=joined["logits"],
        labels=labels,
        teacher_features={m: joined[f"teacher_feature/{m}"] for m in (teachers or {})},
        teacher_logits={m: joined[f"teacher_logits/{m}"] for m in (teachers or {})},
    )


def subset_table(
    model: MultimodalModel, outputs: Outputs, prior: Tensor, task: str, num_classes: int
) -> list[dict]:
    """The score with every subset of modalities present (the others absent), the full set first."""
    modalities = list(model.modalities)
    rows = []
    with torch.no_grad():
        for size in range(len(modalities), -1, -1):
            for present in itertools.combinations(modalities, size):
                logits = fused_logits(model, outputs.features, frozenset(present), prior)
                rows.append({"present": list(present), "absent": [m for m in modalities if m not in present],
                             **scores(logits, outputs.labels, task, num_classes)})
    return rows


def noise_corruption(modality: str, sigma: float, scale: float, seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """Add ``N(0, (sigma * scale)^2)`` to ``modality``'s input, from a seeded generator (one stream per pass)."""
    generator = torch.Generator().manual_seed(seed)

    def corrupt(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        x = inputs[modality]
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        return {**inputs, modality: x + sigma * scale * noise}

    return corrupt


def input_std(data: MultimodalData, modality: str, rows: int = 2048) -> float:
    """Standard deviation of ``modality``'s training inputs as the model sees them (at most ``rows`` rows), the unit of the noise levels."""
    x = data.modalities[modality].as_input(data.splits["train"][modality][:rows])
    return x.std().item()


def embedding_rows(features: dict[str, Tensor], labels: Tensor, seed: int, points: int = EMBEDDING_POINTS) -> list[dict]:
    """2-D PCA and t-SNE of the modalities' features pooled together (the same ``points`` test
    rows from each modality), for the modality-gap picture."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(labels), generator=generator)[:points]
    modalities = list(features)
    pooled = torch.cat([F.normalize(features[m][index].double(), dim=1) for m in modalities])
    pca, tsne = pca_2d(pooled), tsne_2d(pooled, seed)
    rows = []
    for i, m in enumerate(modalities):
        for j, row in enumerate(index.tolist()):
            at = i * len(index) + j
            rows.append({"modality": m, "row": row, "label": labels[row].item(), "pca_1": pca[at, 0].item(),
                         "pca_2": pca[at, 1].item(), "tsne_1": tsne[at, 0].item(), "tsne_2": tsne[at, 1].item()})
    return rows


@dataclass
class LoadedRun:
    """A finished run rebuilt for analysis."""

    run_dir: Path
    config: ExperimentConfig
    data: MultimodalData
    model: MultimodalModel
    teachers: dict[str, nn.Module]
    metrics: dict


def load_run(run_dir: Path) -> LoadedRun:
    """Rebuild a run from its folder: config, data, best weights, and its teachers where they exist."""
    from g2d.config import load_config
    from g2d.data import load_dataset
    from g2d.io import load_weights, read_metrics
    from g2d.methods import build_method
    from g2d.methods.build import build_model
    from g2d.training.teachers import as_modules, load_existing_teachers, output_size

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise G2DError(f"run folder not found: {run_dir}")
    metrics = read_metrics(run_dir)
    if metrics.get("method") == "teacher":
        raise G2DError(f"{run_dir}: a teacher's folder; analyze the multimodal run that uses it")
    config = load_config(run_dir / "config.yaml", [f"out={run_dir}"])
    data = load_dataset(config.dataset)
    method = build_method(config.method, data.task, list(data.modalities))
    model = build_model(data.modalities, config.model, output_size(data), method)
    load_weights(run_dir / "checkpoints" / "best.safetensors", model)
    teachers = as_modules(load_existing_teachers(config, data))
    return LoadedRun(run_dir, config, data, model, teachers, metrics)


def initial_model(loaded: LoadedRun) -> MultimodalModel:
    """The student as it was before its first step: built under the run's seed as ``g2d.runs.experiment.run``
    builds it. Its first-built encoder then holds the same weights its teacher started from (a teacher
    shares the run's seed), which is what ``alignment_at_start`` makes visible. Global random state is kept."""
    from g2d.training.engine import seed_everything
    from g2d.training.teachers import output_size

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            seed_everything(loaded.config.seed)
            return MultimodalModel(loaded.data.modalities, loaded.config.model, output_size(loaded.data))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@dataclass
class AnalysisInput:
    """What an analysis reads: the loaded run, its test-split outputs (model and teachers), and the
    settings of the pass; ``train`` and ``start`` are collected on first use. An analysis that writes
    rows for ``embedding.csv`` puts them in ``embedding``."""

    loaded: LoadedRun
    device: torch.device
    batch_size: int
    seed: int
    noise_levels: tuple[float, ...]
    test: Outputs
    embedding: list[dict] = field(default_factory=list)

    @functools.cached_property
    def train(self) -> Outputs:
        return collect(self.loaded.model, self.loaded.data, "train", self.device, self.batch_size)

    @functools.cached_property
    def start(self) -> Outputs:
        return collect(initial_model(self.loaded), self.loaded.data, "test", self.device, self.batch_size)


# Each analysis adds its keys to analysis.json, in registration order; a new one is a function
# registered here or in a new module of this package (``g2d.results`` imports them all), with
# ``@ANALYSES.register("name")``: the function is its own record.
ANALYSES: Registry[Callable[[AnalysisInput], dict]] = Registry("analysis", "g2d analyze")


@ANALYSES.register("multimodal")
def multimodal_scores(run: AnalysisInput) -> dict:
    """The fused prediction's scores and confidence."""
    test, data = run.test, run.loaded.data
    return {"multimodal": {**scores(test.logits, test.labels, data.task, data.num_classes),
                           "confidence": confidence(test.logits, test.labels, data.task)}}


@ANALYSES.register("per_modality")
def per_modality_scores(run: AnalysisInput) -> dict:
    """Each modality inside the model, its linear probe, and beside its teacher: confidence ratio and alignment."""
    test, data, teachers = run.test, run.loaded.data, run.loaded.teachers
    task, k = data.task, data.num_classes
    per_modality = {}
    for m in run.loaded.model.modalities:
        entry: dict = {
            "inside": {**scores(test.modality_logits[m], test.labels, task, k),
                       "confidence": confidence(test.modality_logits[m], test.labels, task)},
            "probe": linear_probe(run.train.features[m], run.train.labels, test.features[m], test.labels, task, k),
        }
        if m in teachers:
            teacher_confidence = confidence(test.teacher_logits[m], test.labels, task)
            entry["teacher"] = {**scores(test.teacher_logits[m], test.labels, task, k), "confidence": teacher_confidence}
            entry["confidence_ratio"] = entry["inside"]["confidence"] / teacher_confidence
            entry["alignment"] = mean_cosine(test.features[m], test.teacher_features[m])
            entry["alignment_at_start"] = mean_cosine(run.start.features[m], test.teacher_features[m])
        per_modality[m] = entry
    return {"per_modality": per_modality}


@ANALYSES.register("shapley")
def shapley_and_subsets(run: AnalysisInput) -> dict:
    """The score with every subset of modalities absent, and the modalities' Shapley values from it."""
    model, data = run.loaded.model, run.loaded.data
    subsets = subset_table(model, run.test, label_prior(data), data.task, data.num_classes)
    by_present = {frozenset(row["present"]): value_of(row) for row in subsets}
    return {"shapley": shapley_values(list(model.modalities), lambda s: by_present[s]), "subsets": subsets}


@ANALYSES.register("noise")
def noise_robustness(run: AnalysisInput) -> dict:
    """The score with each modality's input corrupted by Gaussian noise at each level."""
    model, data = run.loaded.model, run.loaded.data
    noise = []
    for m in model.modalities:
        scale = input_std(data, m)
        for sigma in run.noise_levels:
            corrupted = collect(model, data, "test", run.device, run.batch_size,
                                corrupt=noise_corruption(m, sigma, scale, run.seed)) if sigma else run.test
            noise.append({"modality": m, "sigma": sigma,
                          **scores(corrupted.logits, run.test.labels, data.task, data.num_classes)})
    return {"noise": noise, "noise_unit": "standard deviation of the modality's training inputs"}


@ANALYSES.register("modality_gap")
def modality_gap(run: AnalysisInput) -> dict:
    """Centroid distances between the modalities' features and their 2-D embedding, when they share a size."""
    model = run.loaded.model
    gap = None
    if len({model.feature_dims[m] for m in model.modalities}) == 1:
        gap = {f"{a}|{b}": centroid_gap(run.test.features[a], run.test.features[b])
               for a, b in itertools.combinations(model.modalities, 2)}
        run.embedding = embedding_rows(run.test.features, run.test.labels, run.seed)
    return {"modality_gap": gap, "modality_gap_note": None if gap is not None else "feature sizes differ; no common space"}


def analyze(loaded: LoadedRun, device: torch.device, batch_size: int = 256, seed: int = 0,
            noise_levels: tuple[float, ...] = NOISE_LEVELS) -> tuple[dict, list[dict]]:
    """Every registered analysis of a loaded run on its test split: ``(analysis.json content, embedding rows)``."""
    test = collect(loaded.model, loaded.data, "test", device, batch_size, loaded.teachers)
    run = AnalysisInput(loaded, device, batch_size, seed, noise_levels, test)
    result = {
        "split": "test",
        "run": str(loaded.run_dir),
        "method": loaded.metrics.get("method"),
        "task": loaded.data.task,
        "modalities": list(loaded.model.modalities),
        "fusion": loaded.metrics.get("fusion"),
    }
    for analysis in ANALYSES.values():
        result.update(analysis(run))
    return result, run.embedding


def analyze_run(run_dir: Path, overwrite: bool = False, device: str = "cpu", seed: int = 0) -> dict:
    """Analyze a finished run and write ``RUN_DIR/analysis/{analysis.json, embedding.csv}``.

    An existing analysis is kept unless ``overwrite``; every input is checked before anything is
    written, and the new analysis is built beside the old one and swapped in complete.
    """
    from g2d.training.engine import select_device

    run_dir = Path(run_dir)
    out = run_dir / "analysis"
    if seed < 0:
        raise G2DError(f"--seed: must be at least 0, got {seed}")
    try:
        chosen = select_device(device)
    except G2DError as exc:
        raise G2DError(str(exc).replace("config key trainer.device", "--device")) from exc
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and kind_of(out) != "analysis")):
        raise G2DError(f"{out}: holds something other than an analysis; move it away to analyze {run_dir}")
    if (out / "analysis.json").exists() and not overwrite:
        raise G2DError(f"{out / 'analysis.json'} exists; pass --overwrite to recompute it")
    if not run_dir.is_dir():
        raise G2DError(f"run folder not found: {run_dir}")
    # Holding the run folder's lock: a run still training (or being extended) is refused, and none starts meanwhile.
    with folder_lock(run_dir, "run folder", wait=False, advice="analyze it once that run has finished"):
        loaded = load_run(run_dir)
        read = finished_checkpoint(run_dir, loaded.metrics)
        result, embedding = analyze(loaded, chosen, loaded.config.trainer.eval_batch_size, seed)
        result["checkpoint"] = read
        with building(out, "analysis") as work:
            if embedding:
                with open(work / "embedding.csv", "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(embedding[0]), lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(embedding)
            (work / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def finished_checkpoint(run_dir: Path, metrics: dict) -> dict:
    """The identity of the checkpoint behind ``metrics.json`` (``checkpoint.identity``); a checkpoint of
    other epochs (an extension stopped part way) is refused rather than analysed as if it were the result."""
    read = checkpoint.identity(run_dir)
    if read is None:
        raise G2DError(f"{run_dir}: no committed checkpoint to analyse")
    if read["epochs"] != metrics.get("epochs"):
        raise G2DError(f"{run_dir}: its checkpoint is after epoch {read['epochs']} but metrics.json is of "
                       f"{metrics.get('epochs')} epochs (an extension not finished); finish it with "
                       "trainer.resume=true before analysing it")
    return read


def stale_analysis(run_dir: Path, analysis: dict) -> str | None:
    """Why ``analysis.json`` no longer describes the run (its checkpoint changed since), or None.

    Analyses written before the checkpoint was recorded cannot be checked and are taken as they are.
    """
    read = analysis.get("checkpoint")
    now = checkpoint.identity(Path(run_dir))
    if read is None or read == now:
        return None
    current = f"{now['name']} after epoch {now['epochs']}" if now else "none"
    return (f"{Path(run_dir) / 'analysis' / 'analysis.json'}: made from checkpoint {read['name']} after epoch "
            f"{read['epochs']}, but the run's checkpoint is now {current}; rerun g2d analyze {run_dir} --overwrite")


def read_analysis(run_dir: Path) -> dict | None:
    """A run's ``analysis/analysis.json``, or None when it was not analysed."""
    path = Path(run_dir) / "analysis" / "analysis.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise G2DError(f"{path}: not valid JSON ({exc})") from exc


def summary_lines(result: dict) -> list[str]:
    """A few lines a person reads after ``g2d analyze``: per modality inside, probe, ratio, alignment, Shapley."""
    key = "accuracy" if result["task"] == "classification" else "mse"
    lines = [f"{result['method']} on {', '.join(result['modalities'])}: multimodal test {key} "
             f"{result['multimodal'][key]:.4f}"]
    for m, entry in result["per_modality"].items():
        parts = [f"inside {entry['inside'][key]:.4f}", f"linear probe {entry['probe'][key]:.4f}",
                 f"Shapley {result['shapley'][m]:+.4f}"]
        if "confidence_ratio" in entry:
            parts += [f"confidence ratio {entry['confidence_ratio']:.3f}", f"alignment {entry['alignment']:.3f}"]
        lines.append(f"  {m}: " + ", ".join(parts))
    return lines
