"""The avdigits claims in README.md and docs/results.md quote exactly what the committed raw CSV gives (issue 31),
and the statistics behind them (paired t, Holm, detectable difference, verdict rule) equal hand-computed values."""

import importlib.util
import math
import re
import statistics
import sys

import numpy as np
import pytest
from conftest import ROOT

G2D, JOINT, UMT, UMT_SMP, LOSS = "G²D", "Joint-Train", "UMT", "UMT + SMP", "G²D loss (no SMP)"
JOINT_SMP = "Joint-Train + SMP"
INTERVAL = re.compile(r"[+-]?\d+\.\d \[[+-]?\d+\.\d, [+-]?\d+\.\d\]")

# Every interval each file quotes, in the order it appears: (words within 200 characters before it, A, B, selection
# rule, score, whether "detectable X" follows it[, the grid's epochs when not the 6-epoch grid; rule "authors" is that
# grid's authors'-protocol arm]). The quote must read "A − B [CI], p ..." as the CSV gives it.
CLAIMS = {
    "README.md": [
        ("primary contrast", G2D, JOINT, "val", "multimodal", False),
        ("plain UMT did as well", G2D, UMT, "val", "multimodal", False),
    ],
    "docs/results.md": [
        ("Primary, G²D − Joint-Train", G2D, JOINT, "val", "multimodal", True),
        ("authors' best-on-test rule", G2D, JOINT, "test", "multimodal", False),
        ("Plain UMT matches G²D: G²D − UMT", G2D, UMT, "val", "multimodal", True),
        ("G²D − UMT + SMP", G2D, UMT_SMP, "val", "multimodal", False),
        ("UMT − Joint-Train", UMT, JOINT, "val", "multimodal", False),
        ("loss without SMP − Joint-Train", LOSS, JOINT, "val", "multimodal", False),
        ("audio inside the model, G²D − Joint-Train", G2D, JOINT, "val", "audio", False),
        ("image inside", G2D, JOINT, "val", "image", False),
        ("G²D − G²D loss", G2D, LOSS, "val", "multimodal", True),
        ("Joint-Train", JOINT_SMP, JOINT, "val", "multimodal", True),
        ("UMT", UMT_SMP, UMT, "val", "multimodal", True),
        ("UMT + SMP − UMT on audio", UMT_SMP, UMT, "val", "audio", False),
        ("best-on-test", UMT_SMP, UMT, "test", "audio", False),
        ("Joint-Train + SMP − Joint-Train on image", JOINT_SMP, JOINT, "val", "image", False),
        ("best-on-test", JOINT_SMP, JOINT, "test", "image", False),
        ("partial − complete modulation", "G²D, partial modulation", G2D, "val", "multimodal", True),
        ("the authors' mean", "G²D, Eq. 2 sum", G2D, "val", "multimodal", False),
        ("beta 10", "G²D, beta 10", G2D, "val", "multimodal", False),
        ("beta 0.1", "G²D, beta 0.1", G2D, "val", "multimodal", False),
        ("best-on-test rule", "G²D, beta 0.1", G2D, "test", "multimodal", False),
        ("Alpha 0.1", "G²D, alpha 0.1", G2D, "val", "multimodal", False),
        ("alpha 10", "G²D, alpha 10", G2D, "val", "multimodal", False),
        ("dynamic + freeze", "G²D, dynamic, freeze", G2D, "val", "multimodal", False),
        ("ranked + conv_grad", "G²D, ranked, conv_grad", G2D, "val", "multimodal", False),
        ("dynamic + conv_grad", "G²D, dynamic, conv_grad", G2D, "val", "multimodal", False),
        ("tau 1", "G²D, tau 1/6", G2D, "val", "multimodal", False),
        ("tau 5", "G²D, tau 5/6", G2D, "val", "multimodal", False),
        ("audio inside", "G²D, tau 5/6", G2D, "val", "audio", False),
        ("image inside", "G²D, tau 5/6", G2D, "val", "image", False),
        ("G²D − Joint-Train at 48 epochs", G2D, JOINT, "val", "multimodal", False, 48),
        ("G²D − UMT at 48 epochs", G2D, UMT, "val", "multimodal", False, 48),
        ("Joint-Train + SMP − Joint-Train at 48 epochs", JOINT_SMP, JOINT, "val", "multimodal", False, 48),
        ("UMT + SMP − UMT at 48 epochs", UMT_SMP, UMT, "val", "multimodal", False, 48),
        ("G²D − G²D loss at 48 epochs", G2D, LOSS, "val", "multimodal", False, 48),
        ("tau 1/6 at 48 epochs", "G²D, tau 1/6", G2D, "val", "multimodal", False, 48),
        ("tau 5/6 at 48 epochs", "G²D, tau 5/6", G2D, "val", "multimodal", False, 48),
        ("supersedes these with Joint-Train + SMP − Joint-Train", JOINT_SMP, JOINT, "val", "multimodal", False),
    ],
}


def load_script():
    """benchmarks/paper_tables.py as a module (registered, so its dataclass resolves its own module)."""
    spec = importlib.util.spec_from_file_location("paper_tables", ROOT / "benchmarks" / "paper_tables.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    return script


script = load_script()


@pytest.fixture(scope="module")
def table():
    return script.read_rows(script.CSV_PATH)


def flat(path: str) -> str:
    """The file's text with every run of whitespace made one space, so a quote may wrap across lines."""
    return " ".join((ROOT / path).read_text().split())


def grid(epochs: int) -> dict:
    """``{rule: contrasts}`` of the committed grid at ``epochs`` (its authors' arm under the rule 'authors')."""
    table = script.read_rows(script.paths(epochs)[0])
    found = {rule: script.contrasts(table, rule) for rule in script.RULES if rule != "last"}
    authors = script.paths(epochs, authors=True)[0]
    if authors.is_file():
        found["authors"] = script.contrasts(script.read_rows(authors), "test")
    return found


@pytest.mark.parametrize("path", sorted(CLAIMS))
def test_every_quoted_interval_is_what_the_committed_csv_gives(path):
    """Each claim quotes the 6-epoch grid, or the grid at the epochs its eighth field names."""
    grids = {}
    text = flat(path)
    matches = list(INTERVAL.finditer(text))
    assert len(matches) == len(CLAIMS[path]), (
        f"{path} quotes {len(matches)} intervals, the claims table lists {len(CLAIMS[path])}: "
        f"{[m.group() for m in matches]}")
    for match, (words, first, second, rule, column, detectable, *epochs) in zip(matches, CLAIMS[path]):
        epochs = epochs[0] if epochs else script.EPOCHS
        found = grids.setdefault(epochs, grid(epochs))
        contrast = script.find(found[rule], first, second, column)
        where = f"{path}: {first} − {second} ({rule}, {column}) at ...{text[match.start() - 60:match.end() + 20]}..."
        assert text.startswith(contrast.quote(), match.start()), f"{where}: the CSV gives {contrast.quote()}"
        assert words in text[max(0, match.start() - 200):match.start()], f"{where}: {words!r} not just before it"
        if detectable:
            assert f"detectable {contrast.detectable:.1f}" in text[match.end():match.end() + 120], where


def test_the_summary_sentences_follow_the_csv(table):
    text = flat("docs/results.md")
    val, test = script.contrasts(table, "val"), script.contrasts(table, "test")
    multimodal = [c for c in val if c.column == "multimodal"]
    low, high = min(c.detectable for c in multimodal), max(c.detectable for c in multimodal)
    assert f"5 seeds detect differences of {low:.1f} to {high:.1f} points" in text
    audio = [c for c in val if c.column == "audio"]
    assert f"({len(multimodal) - 1} multimodal comparisons; {len(audio)} per modality)" in text  # Holm families
    smp = [c.detectable for c in multimodal if c.section == "SMP variants"]
    assert f"(detectable {min(smp):.1f}-{max(smp):.1f})" in text
    epochs = [statistics.mean(r["val_best_epoch"] for r in table[label].values()) for label in script.TABLE4]
    assert f"averages {min(epochs):.1f} to {max(epochs):.1f}" in text
    gains = [statistics.mean(100 * (r["test_multimodal"] - r["val_multimodal"]) for r in table[label].values())
             for label in script.TABLE4]
    assert f"reads {min(gains):.1f} to {max(gains):.1f} points higher" in text
    assert ("No verdict word changes" in text) == all(a.verdict == b.verdict for a, b in zip(val, test))
    # the only words of the verdict rule used for a multimodal comparison are those the rule gives it
    assert [c.verdict for c in multimodal if c.verdict != "not separable"] == ["holds"]
    assert script.find(val, G2D, JOINT, "audio").verdict == "higher"
    partial = script.find(val, "G²D, partial modulation", G2D)
    assert partial.wins == 0 and "partial was lower in all 5 seeds" in text


def test_paired_t_by_hand():
    """Differences 1, 2, 6 points over 3 seeds: mean 3, sd sqrt(7), t = 3 / sqrt(7/3); df 2 has closed forms."""
    mean, low, high, sd, p = script.paired([0.11, 0.22, 0.36], [0.10, 0.20, 0.30])
    t = 3 / math.sqrt(7 / 3)
    quantile = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} = (2q - 1) / sqrt(2 q (1 - q)) = 4.3027
    assert mean == pytest.approx(3) and sd == pytest.approx(math.sqrt(7))
    assert high - mean == pytest.approx(quantile * math.sqrt(7 / 3)) and mean - low == pytest.approx(high - mean)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # two-sided p for df 2: 1 - t / sqrt(2 + t²)
    assert script.paired([0.5, 0.6], [0.5, 0.6])[4] == 1.0  # no difference at all


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone at 0.06
    assert script.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert script.holm([0.5, 0.9]) == [1.0, 1.0]


def test_detectable_difference_has_the_stated_power():
    """At the returned difference a simulated paired t-test at 0.05 rejects 80 % of the time; large n -> z-formula."""
    sd, n = 3.0, 5
    difference = script.detectable_difference(sd, n)
    samples = np.random.default_rng(0).normal(difference, sd, size=(200_000, n))
    t = samples.mean(axis=1) / (samples.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > 2.7764451) == pytest.approx(0.80, abs=0.005)  # t_{0.975, 4}
    assert script.detectable_difference(1.0, 2000) == pytest.approx((1.959964 + 0.841621) / math.sqrt(2000), rel=2e-3)


def test_verdict_words_follow_the_written_rule():
    """The same differences (p 0.035) hold as the primary contrast but not as Holm-corrected secondaries."""
    rows = {seed: {"val_multimodal": 0.5, "val_audio": 0.5, "val_image": 0.5} for seed in range(5)}
    shifted = {seed: {**rows[seed], "val_multimodal": 0.5 + d / 100} for seed, d in enumerate([1, 3, 0, 2, 2])}
    big = {seed: {**rows[seed], "val_multimodal": 0.5 + d / 100} for seed, d in enumerate([9, 10, 11, 10, 10])}
    labels = (G2D, UMT, "G²D, tau 1", "G²D, tau 5")
    found = script.contrasts({JOINT: rows, G2D: shifted, UMT: shifted, "G²D, tau 1": shifted, "G²D, tau 5": big},
                             "val", [("t", label, JOINT) for label in labels])
    primary, umt, tau, strong = (script.find(found, label, JOINT) for label in labels)
    assert primary.p == pytest.approx(0.0349197, rel=1e-5) and primary.adjusted == primary.p
    assert primary.verdict == "holds" and primary.quote() == "+1.6 [+0.2, +3.0], p 0.03"
    # Holm over the three secondaries: strong x 3, then 0.0349 x 2 = 0.0698, then max(0.0349 x 1, 0.0698)
    assert umt.p == primary.p and umt.adjusted == tau.adjusted == pytest.approx(2 * primary.p)
    assert umt.verdict == "not separable" and umt.quote() == "+1.6 [+0.2, +3.0], Holm p 0.07"
    assert strong.adjusted == pytest.approx(3 * strong.p) and strong.verdict == "higher"
    assert script.find(found, UMT, JOINT, "audio").verdict == "not separable"


def fake_metrics(seed: int, kept: int) -> dict:
    scores = {"multimodal": {"accuracy": 0.5}, "per_modality": {m: {"accuracy": 0.4} for m in script.MODALITIES}}
    selection = {rule: {"best_epoch": kept, "test": scores} for rule in script.RULES}
    return {"seed": seed, "wall_seconds": 1.0, "selection": selection}


def test_a_rerun_runs_only_the_rows_the_csv_lacks(tmp_path, monkeypatch):
    """Rows land per seed as each seed ends; a rerun runs nothing already in the CSV, and only what is missing."""
    calls = []

    def sweep(config, overrides, points, seeds, out, workers, log):
        calls.append(([p.label for p in points], seeds, out.name, "trainer.epochs=12" in overrides))
        return {p.label: [fake_metrics(seeds[0], 3)] for p in points}

    monkeypatch.setattr(script, "run_sweep", sweep)
    labels = {label: script.points(12)[label] for label in ("Joint-Train", "G²D, tau 5/6")}
    path = tmp_path / "grid.csv"
    script.run_missing(labels, [0, 1], 12, path, tmp_path / "data", tmp_path / "runs", 2)
    assert calls == [(list(labels), [0], "e12", True), (list(labels), [1], "e12", True)]
    assert labels["G²D, tau 5/6"][-1] == "smp.tau=[10]"
    script.run_missing(labels, [0, 1], 12, path, tmp_path / "data", tmp_path / "runs", 2)
    assert len(calls) == 2 and len(script.read_csv(path)) == 4
    kept = [line for line in path.read_text().splitlines() if not line.startswith("Joint-Train,") or ",1," not in line]
    path.write_text("\n".join(kept) + "\n")  # drop Joint-Train seed 1
    script.run_missing(labels, [0, 1], 12, path, tmp_path / "data", tmp_path / "runs", 2)
    assert calls[2:] == [(["Joint-Train"], [1], "e12", True)]
    assert sorted((r["config"], int(r["seed"])) for r in script.read_csv(path)) == sorted(
        (label, seed) for label in labels for seed in (0, 1))


def test_the_pilot_rule_picks_the_smallest_schedule_where_training_ends_early():
    rows = [script.csv_row(method, [], fake_metrics(seed, kept), epochs)
            for epochs, kept_by_method in ((12, {"Joint-Train": 9, "G²D": 6}), (24, {"Joint-Train": 18, "G²D": 9}))
            for method, kept in kept_by_method.items() for seed in range(3)]
    verdicts = script.pilot_verdicts([{k: v if k in ("config", "overrides") else float(v) for k, v in r.items()}
                                      for r in rows])
    # kept epoch counted from 1: Joint-Train 10 >= 0.8 x 12 = 9.6 (not settled), then 19 < 0.8 x 24 = 19.2 (settled)
    assert verdicts == {12: {"Joint-Train": (3, 10), "G²D": (3, 7)}, 24: {"Joint-Train": (3, 19), "G²D": (3, 10)}}
    assert not script.settled(verdicts[12], 12) and script.settled(verdicts[24], 24)
    assert not script.settled(verdicts[24], 24, 4)  # a candidate with seeds still missing is not settled


def test_the_rerun_page_renders_from_the_rerun_points_alone(table):
    """At another schedule only Table 4 and the window rows run; the page keeps the rows whose both sides ran."""
    rerun = ["Joint-Train", "Joint-Train + SMP", "UMT", "UMT + SMP", "G²D loss (no SMP)", "G²D", "G²D, tau 1/6",
             "G²D, tau 5/6"]
    page = script.render({label: table[label] for label in rerun}, {}, epochs=24)
    assert page.startswith("# Paper tables on avdigits (CPU schedule, 24 epochs), generated from paper_tables_e24.csv")
    assert "`python benchmarks/paper_tables.py --tables-only --epochs 24`" in page
    assert "**Primary contrast**: G²D − Joint-Train = +8.0 [+3.5, +12.6], p 0.008" in page
    assert "| window | G²D, tau 5/6 − G²D |" in page and "partial modulation" not in page


def test_bf16_page_is_rendered_from_its_committed_csv():
    """docs/results/bf16_check.md is exactly what benchmarks/bf16_check.py renders from bf16_check.csv."""
    spec = importlib.util.spec_from_file_location("bf16_check", ROOT / "benchmarks" / "bf16_check.py")
    bf16 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bf16)
    assert (ROOT / "docs" / "results" / "bf16_check.md").read_text() == bf16.render(bf16.read_rows())


def test_the_authors_protocol_runs_apart_and_its_changed_verdicts_are_listed(tmp_path, monkeypatch, table):
    """Item 4: the authors' arm adds its overrides, runs in a folder of its own, and the page lists each cell whose
    verdict differs between validation selection and that arm."""
    calls = []

    def sweep(config, overrides, points, seeds, out, workers, log):
        calls.append((out.name, [p.overrides for p in points]))
        return {p.label: [fake_metrics(seeds[0], 3)] for p in points}

    monkeypatch.setattr(script, "run_sweep", sweep)
    labels = {"G²D": script.points(12)["G²D"]}
    script.run_missing(labels, [0], 12, tmp_path / "authors.csv", tmp_path, tmp_path / "runs", 2, authors=True)
    assert calls == [("e12_authors", [[*labels["G²D"], *script.AUTHORS]])]
    assert script.paths(12, authors=True)[0].name == "paper_tables_e12_authors.csv"
    assert script.paths(12, authors=True)[2] == script.paths(12)[2]  # one page for both arms
    # The authors' arm as the committed 6-epoch grid's best-on-test scores: the page's list must equal the same-run list.
    page = script.render(table, {}, epochs=24, authors=table)
    arm = page.split("## The authors' protocol")[1]
    same_runs = script.changed_verdicts(script.contrasts(table, "val"), script.contrasts(table, "test"))
    assert same_runs and [line.replace("; authors ", "; test ") for line in arm.split("- none")[0].splitlines()
                          if line.startswith("- ") and " − " in line] == same_runs
    assert "| Table 4 | G²D − Joint-Train (primary) |" in arm
