"""Draw docs/architecture.md's diagrams from the source, and print what they show.

The imports are read from the code as ``tests/test_layers.py`` reads them (every ``import`` of a
g2d module, function-level ones included), so the drawings follow the code when it changes:

- ``layers.png``: the layers bottom to top with their modules and lines, beside the number of
  imports from each layer into each other one (an upward import would show above the diagonal);
- ``step.png``: one training step's path through the files, from the config to the optimizer.
  Every drawn function, and every call listed in ``CALLS``, is checked against the source, so a
  renamed or rerouted call stops the drawing instead of leaving it wrong;
- ``tower.png`` (with ``--before``): the modules by import level, another tree beside this one.

It also prints the tower's height (levels of the import graph, a cycle counted as one level) and
its longest import chain; ``--measure-only`` measures any tree without drawing. The page's
drawings, with the flat package before the layer move beside today's:

    git archive d689a61 src | tar -x -C /tmp/before
    PYTHONPATH=src python benchmarks/architecture.py --out docs/architecture --before /tmp/before/src/g2d
"""

from __future__ import annotations

import argparse
import ast
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1] / "src" / "g2d"
# Bottom to top, as tests/test_layers.py declares them: (name, module prefixes, colour).
LAYERS = [
    ("shared root", {"g2d.errors", "g2d.faults", "g2d.io", "g2d.locks", "g2d.registry", "g2d.config"}, "#d9d9d9"),
    ("core", {"g2d.core"}, "#fbb4ae"),
    ("data", {"g2d.data"}, "#b3cde3"),
    ("models", {"g2d.models"}, "#ccebc5"),
    ("methods", {"g2d.methods"}, "#decbe4"),
    ("training", {"g2d.training"}, "#fed9a6"),
    ("results", {"g2d.results"}, "#ffffcc"),
    ("runs", {"g2d.runs"}, "#e5d8bd"),
    ("entry points", {"g2d", "g2d.__main__", "g2d.cli"}, "#fddaec"),
]
# One training step's path, drawn as boxes: (module, function, what happens there); left column
# from the command to the method's loss, right column the step's shared tail.
STEP_PATH = [
    ("g2d.cli", "train", "g2d train CONFIG key=value ..."),
    ("g2d.config", "load_config", "YAML + overrides -> typed ExperimentConfig"),
    ("g2d.runs.experiment", "run", "checks, claims the run folder"),
    ("g2d.runs.experiment", "train_and_report", "teachers, model (build_model), SMP"),
    ("g2d.training.engine", "fit", "epochs, checkpoints, evaluation"),
    ("g2d.training.fast", "TrainingPath.step", "reference step, or the CUDA-graph replay"),
    ("g2d.methods.base", "Method.train_step", "forward, backward, the method's modulation"),
    ("g2d.methods.g2d", "G2D.loss", "the method's loss (G2D here)"),
    ("g2d.core.losses", "logit_distillation", "task loss, feature + logit distillation"),
]
STEP_TAIL = [
    ("g2d.methods.base", "Method.finish_step", "the shared tail (MLA, MMPareto... too)"),
    ("g2d.methods.base", "MethodContext.smp_coefficients", "SMP's kappa from teacher confidence"),
    ("g2d.core.smp", "Modulator.coefficients", "kappa for this epoch's phase"),
    ("g2d.methods.base", "Method.update", "kappa x encoder grads, learning-rate factors"),
    ("g2d.core.smp", "Modulator.optimizer_step", "optimizer.step(), freeze honoured"),
    ("g2d.methods.base", "Method.report", "loss, terms, accuracy, kappa per modality"),
]
# The calls the arrows stand for, checked in the source: (module, function, name it calls).
CALLS = [
    ("g2d.cli", "train", "load_config"), ("g2d.cli", "train", "run"),
    ("g2d.runs.experiment", "run", "train_and_report"),
    ("g2d.runs.experiment", "train_and_report", "build_model"), ("g2d.runs.experiment", "train_and_report", "fit"),
    ("g2d.training.engine", "fit", "step"), ("g2d.training.fast", "TrainingPath.step", "train_step"),
    ("g2d.methods.base", "Method.train_step", "loss"), ("g2d.methods.base", "Method.train_step", "finish_step"),
    ("g2d.methods.g2d", "G2D.loss", "logit_distillation"),
    ("g2d.methods.base", "Method.finish_step", "smp_coefficients"),
    ("g2d.methods.base", "MethodContext.smp_coefficients", "coefficients"),
    ("g2d.methods.base", "Method.finish_step", "update"),
    ("g2d.methods.base", "Method.update", "optimizer_step"),
    ("g2d.methods.base", "MethodContext.optimizer_step", "optimizer_step"),
    ("g2d.methods.base", "Method.finish_step", "report"),
]


def module_name(package: Path, path: Path) -> str:
    parts = ("g2d",) + path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path) -> dict[str, Path]:
    return {module_name(package, path): path for path in sorted(package.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The g2d modules ``name`` imports, anywhere in its file (tests/test_layers.py's reading)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "g2d":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "g2d")
    found.discard(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the g2d modules it imports; imports of the package itself (``g2d``) are left out."""
    known = modules(package)
    return {name: {t for t in imports_of(name, path, known) if t in known and t != "g2d"}
            for name, path in known.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each a list of modules; a cycle is one component."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def levels(graph: dict[str, set[str]]) -> dict[tuple[str, ...], tuple[int, tuple[str, ...] | None]]:
    """Each component (a cycle's modules together) -> (its level, the component below it on its longest
    chain). Importing nothing puts it on level 1, else it stands one above the highest it imports."""
    groups = [tuple(group) for group in components(graph)]
    group_of = {m: group for group in groups for m in group}
    found: dict[tuple[str, ...], tuple[int, tuple[str, ...] | None]] = {}
    for group in groups:  # Tarjan emits a component after everything it imports
        targets = {group_of[t] for m in group for t in graph[m]} - {group}
        below = max(targets, key=lambda t: (found[t][0], t), default=None)
        found[group] = (1 + (found[below][0] if below is not None else 0), below)
    return found


def tower(graph: dict[str, set[str]]) -> tuple[int, list[str], list[tuple[str, ...]]]:
    """(height, its longest chain top down, the import cycles)."""
    found = levels(graph)
    node: tuple[str, ...] | None = max(found, key=lambda group: (found[group][0], group))
    height, chain = found[node][0], []
    while node is not None:
        chain.append(" = ".join(node))
        node = found[node][1]
    return height, chain, [group for group in found if len(group) > 1]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def layer_of(name: str) -> int:
    for index, (_, members, _) in enumerate(LAYERS):
        if name in members:
            return index
    for index, (_, members, _) in enumerate(LAYERS):
        if any(name.startswith(prefix + ".") for prefix in members if prefix != "g2d"):
            return index
    raise SystemExit(f"{name} belongs to no layer: add it to LAYERS here and in tests/test_layers.py")


def function_node(package: Path, module: str, qualname: str) -> ast.FunctionDef:
    """The definition of ``qualname`` (``f`` or ``Class.f``) in ``module``, or exit naming what is missing."""
    path = modules(package).get(module)
    if path is None:
        raise SystemExit(f"step path: module {module} not found under {package}")
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise SystemExit(f"step path: {module}.{qualname} not found (redraw the path in {__file__})")
        scope = node.body
    assert isinstance(node, ast.FunctionDef)
    return node


def called_names(node: ast.FunctionDef) -> set[str]:
    """Names the function calls: ``f(...)`` gives f, ``a.b.f(...)`` gives f."""
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def check_path(package: Path) -> None:
    """Every drawn function exists, and every call the arrows stand for is in the caller's body."""
    for module, function, _ in STEP_PATH + STEP_TAIL:
        function_node(package, module, function)
    for module, function, callee in CALLS:
        if callee not in called_names(function_node(package, module, function)):
            raise SystemExit(f"step path: {module}.{function} no longer calls {callee} (redraw the path in {__file__})")


def draw_layers(package: Path, graph: dict[str, set[str]], out: Path, height: int) -> dict[str, tuple[int, int]]:
    """The layers as stacked boxes (modules, lines) beside the layer-to-layer import counts."""
    known = modules(package)
    members: dict[int, list[str]] = {i: [] for i in range(len(LAYERS))}
    for name in known:
        members[layer_of(name)].append(name)
    lines = {i: sum(line_count(known[m]) for m in names) for i, names in members.items()}
    counts = [[0] * len(LAYERS) for _ in LAYERS]
    for name, targets in graph.items():
        for target in targets:
            counts[layer_of(name)][layer_of(target)] += 1

    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 10), gridspec_kw={"width_ratios": [1.6, 1]})
    row_height = 1.0
    for i, (label, _, colour) in enumerate(LAYERS):
        y = i * row_height
        left.add_patch(FancyBboxPatch((0.02, y + 0.06), 0.96, row_height - 0.12, boxstyle="round,pad=0.005",
                                      facecolor=colour, edgecolor="#555555"))
        left.text(0.04, y + row_height - 0.2, f"{label}: {len(members[i])} modules, {lines[i]:,} lines",
                  fontsize=11, fontweight="bold", va="center")
        names = sorted(path.stem if path.name != "__init__.py" else "__init__"
                       for path in (known[n] for n in members[i]))
        wrapped, current = [], ""
        for short in names:
            if len(current) + len(short) + 2 > 105:
                wrapped.append(current)
                current = ""
            current = f"{current}, {short}" if current else short
        wrapped.append(current)
        left.text(0.04, y + row_height - 0.38, "\n".join(wrapped[:3]), fontsize=8.5, va="top", family="monospace")
    left.set_xlim(0, 1)
    left.set_ylim(0, len(LAYERS) * row_height)
    left.axis("off")
    total_lines = sum(lines.values())
    left.set_title(f"src/g2d: {len(known)} modules, {total_lines:,} lines; each layer imports only below it\n"
                   f"import tower {height} levels (a module stands one level above what it imports)", fontsize=12)

    labels = [label for label, _, _ in LAYERS]
    image = [[counts[row][col] for col in range(len(LAYERS))] for row in range(len(LAYERS))]
    right.imshow(image, cmap="Blues", origin="lower")
    for row in range(len(LAYERS)):
        for col in range(len(LAYERS)):
            value = counts[row][col]
            if value:
                right.text(col, row, str(value), ha="center", va="center", fontsize=9,
                           color="white" if value > max(map(max, image)) / 2 else "black")
    right.set_xticks(range(len(LAYERS)), labels, rotation=45, ha="right")
    right.set_yticks(range(len(LAYERS)), labels)
    right.set_xlabel("imported layer")
    right.set_ylabel("importing layer")
    upward = sum(counts[r][c] for r in range(len(LAYERS)) for c in range(len(LAYERS)) if c > r)
    right.set_title(f"module imports between layers\n(above the diagonal = upward: {upward})", fontsize=12)
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=110)
    plt.close(fig)
    return {LAYERS[i][0]: (len(members[i]), lines[i]) for i in members}


def draw_step(out: Path) -> None:
    """One training step's path: the calls from the config to the method (left), then the shared tail (right)."""
    colour = {prefix: c for _, members, c in LAYERS for prefix in members}

    def colour_of(module: str) -> str:
        return colour.get(module) or colour[next(p for p in sorted(colour, key=len, reverse=True)
                                                 if module.startswith(p + ".") and p != "g2d")]

    fig, ax = plt.subplots(figsize=(15, 9.5))
    box_w, box_h, gap = 0.44, 0.085, 0.105

    def column(rows: list[tuple[str, str, str]], x: float, top: float) -> list[tuple[float, float]]:
        centres = []
        for i, (module, function, note) in enumerate(rows):
            y = top - i * gap
            ax.add_patch(FancyBboxPatch((x, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.004",
                                        facecolor=colour_of(module), edgecolor="#444444"))
            path = module.replace("g2d.", "", 1).replace(".", "/") + ".py"
            ax.text(x + 0.01, y + 0.017, f"{path}  {function}", fontsize=10.5, fontweight="bold", va="center")
            ax.text(x + 0.01, y - 0.02, note, fontsize=9.5, va="center", color="#333333")
            centres.append((x + box_w / 2, y))
        for (x0, y0), (x1, y1) in itertools.pairwise(centres):
            ax.add_patch(FancyArrowPatch((x0, y0 - box_h / 2), (x1, y1 + box_h / 2), arrowstyle="-|>",
                                         mutation_scale=12, color="#444444"))
        return centres

    left = column(STEP_PATH, 0.02, 0.93)
    right = column(STEP_TAIL, 0.54, 0.93)
    train_step = left[[f for _, f, _ in STEP_PATH].index("Method.train_step")]
    ax.add_patch(FancyArrowPatch((train_step[0] + box_w / 2, train_step[1]), (right[0][0] - box_w / 2, right[0][1]),
                                 arrowstyle="-|>", mutation_scale=12, color="#444444"))
    ax.text(0.54, 0.93 - len(STEP_TAIL) * gap + 0.02,
            "MLA calls Method.update per sub-step and Method.report once;\n"
            "MMPareto sets its integrated gradients, then Method.finish_step;\n"
            "the fast path replays this same step from a CUDA graph.", fontsize=9.5, va="top")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="#444444") for _, _, c in LAYERS]
    ax.legend(handles, [label for label, _, _ in LAYERS], loc="lower right", ncol=3, fontsize=9,
              title="layer (colour)", frameon=False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title("One training step through the files, in the order it reaches them\n"
                 "(every function drawn, and the calls between them, checked against the source)", fontsize=13)
    fig.tight_layout()
    fig.savefig(out / "step.png", dpi=110)
    plt.close(fig)


def colour_of(module: str) -> str:
    """The colour of the module's layer; a module at the root that no layer names (the flat package
    before the layer move) is white."""
    for _, members, colour in LAYERS:
        if module in members or any(module.startswith(p + ".") for p in members if p != "g2d"):
            return colour
    return "#ffffff"


def draw_towers(trees: list[tuple[str, Path]], out: Path) -> None:
    """Each tree's modules by import level, side by side: how tall the tower is and what stands where."""
    fig, axes = plt.subplots(1, len(trees), figsize=(13 * len(trees), 12))
    towers = []
    for _, package in trees:
        by_level: dict[int, list[tuple[str, ...]]] = {}
        for group, (level, _) in levels(import_graph(package)).items():
            by_level.setdefault(level, []).append(group)
        towers.append(by_level)
    slots = max(len(groups) for by_level in towers for groups in by_level.values())
    for ax, (title, package), by_level in zip(axes, trees, towers):
        known = modules(package)
        for level, groups in by_level.items():
            for slot, group in enumerate(sorted(groups, key=lambda g: (colour_of(g[0]), g))):
                label = " <-> ".join(known[m].stem if known[m].name != "__init__.py" else known[m].parent.name + "/"
                                     for m in group)
                cycle = len(group) > 1
                ax.add_patch(FancyBboxPatch((slot + 0.04, level - 0.38), 0.92 * (2 if cycle else 1), 0.76,
                                            boxstyle="round,pad=0.01", facecolor=colour_of(group[0]),
                                            edgecolor="#c00000" if cycle else "#666666", linewidth=2 if cycle else 0.8))
                ax.text(slot + 0.5 * (2 if cycle else 1), level, label, ha="center", va="center", fontsize=7.5)
        height = max(by_level)
        ax.set_xlim(0, slots + 0.2)
        ax.set_ylim(0.3, height + 0.7)
        ax.set_yticks(range(1, height + 1))
        ax.set_ylabel("import level (1 = imports no g2d module)")
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"{title}: {len(known)} modules, {height} levels", fontsize=13)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="#666666") for _, _, c in LAYERS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#ffffff", edgecolor="#666666"))
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#ffffff", edgecolor="#c00000", linewidth=2))
    labels = [label for label, _, _ in LAYERS] + ["flat at the root", "import cycle"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / "tower.png", dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the g2d package folder (default: this tree's)")
    parser.add_argument("--out", type=Path, default=Path("docs/architecture"), help="where the PNGs go")
    parser.add_argument("--measure-only", action="store_true", help="print the measurements, draw nothing")
    parser.add_argument("--before", type=Path, help="another g2d package folder to draw beside this one in tower.png "
                                                     "(the flat package of d689a61, say)")
    args = parser.parse_args()
    graph = import_graph(args.source)
    known = modules(args.source)
    height, chain, cycles = tower(graph)
    flat = [n for n, p in known.items() if p.parent == args.source]
    print(f"{args.source}: {len(known)} modules, {sum(line_count(p) for p in known.values()):,} lines; "
          f"{len(flat)} at the root, __init__.py included ({sum(line_count(known[n]) for n in flat):,} lines)")
    print(f"import tower: {height} levels ({len(chain) - 1} imports on its longest chain, a cycle counted once); "
          f"top down: {' -> '.join(chain)}")
    print(f"import cycles: {'; '.join(' <-> '.join(c) for c in cycles) or 'none'}")
    if args.measure_only:
        return
    check_path(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    per_layer = draw_layers(args.source, graph, args.out, height)
    draw_step(args.out)
    print("lines per layer (bottom to top):")
    for label, (count, lines) in per_layer.items():
        print(f"  {label:<13} {count:>3} modules {lines:>6,} lines")
    print(f"wrote {args.out / 'layers.png'} and {args.out / 'step.png'}")
    if args.before is not None:
        draw_towers([("before", args.before), ("after", args.source)], args.out)
        print(f"wrote {args.out / 'tower.png'}")


if __name__ == "__main__":
    main()
