"""``g2d report``: the Table 1 layout by hand, refusals, and the HTML page in a real headless browser."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from g2d.cli import main
from g2d.results.report import (
    RunRecord,
    gap_rows,
    group_runs,
    robustness_rows,
    table1_rows,
)

CHROMIUM = shutil.which("chromium")
FIGURES = {"curves", "teacher_confidence", "confidence_ratio", "alignment", "probe", "shapley", "missing", "noise", "gap"}


def record(method: str, seed: int, multimodal: float, pix: float, teacher_pix: float, smp: bool) -> RunRecord:
    metrics = {
        "dataset": "mfeat", "task": "classification", "modalities": ["pix"], "method": method, "smp": {"enabled": smp},
        "test": {"multimodal": {"accuracy": multimodal}, "per_modality": {"pix": {"accuracy": pix}}},
        "teachers": {"pix": {"accuracy": teacher_pix}},
    }
    config = {"method.name": method, "smp.enabled": smp, "seed": seed, "out": f"runs/{method}{seed}"}
    return RunRecord(Path(f"runs/{method}{seed}"), metrics, config, [], None, [], {})


def test_table1_groups_seeds_and_shows_teachers_first() -> None:
    records = [record("joint", 0, 0.90, 0.80, 0.95, False), record("joint", 1, 0.92, 0.84, 0.95, False),
               record("joint", 0, 0.91, 0.70, 0.95, True), record("g2d", 0, 0.93, 0.60, 0.95, True)]
    groups = group_runs(records)
    assert list(groups) == ["Joint-Train", "Joint-Train + SMP", "G²D"]
    header, rows = table1_rows(groups)
    assert header == ["model", "seeds", "multimodal accuracy (%)", "pix accuracy (%)"]
    # teachers: one distinct teacher result; Joint-Train: mean of 90 and 92, sample std sqrt(2) = 1.4
    assert rows[0] == ["pix alone (teacher)", "1", "-", "95.0"]
    assert rows[1] == ["Joint-Train", "2", "91.0 ± 1.4", "82.0 ± 2.8"]
    assert rows[2] == ["Joint-Train + SMP", "1", "91.0", "70.0"]
    assert rows[3] == ["G²D", "1", "93.0", "60.0"]


def test_report_refuses_a_used_folder_and_bad_runs(tiny_runs, tmp_path, capsys) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):  # --overwrite replaces an earlier report, not any folder
        assert main(["report", str(tiny_runs["g2d"]), "--out", str(out), *overwrite]) == 2
        assert "did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.strip() == f"g2d: error: run folder not found: {tmp_path / 'nowhere'}"
    assert not (tmp_path / "new").exists()


def non_blank(pixels: np.ndarray) -> bool:
    """More than one colour, with a real spread (a blank or single-colour image has none)."""
    return float(pixels.astype(float).std()) > 5.0


@pytest.fixture(scope="module")
def report(tiny_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", str(tiny_runs["joint"]), str(tiny_runs["g2d"]), "--out", str(out)]) == 0
    return out


def test_report_writes_every_figure_and_the_markdown_table(report) -> None:
    assert {p.stem for p in report.glob("*.png")} == FIGURES
    for png in report.glob("*.png"):
        assert non_blank(np.asarray(Image.open(png).convert("L"))), png
    markdown = (report / "report.md").read_text()
    assert "| pix alone (teacher) | 1 | - |" in markdown and "| G²D | 1 |" in markdown
    assert all(f"({name}.png)" in markdown for name in FIGURES)


PAGE_CHECK = """() => Array.from(document.images).map(img => {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  let data;
  try { context.drawImage(img, 0, 0); data = context.getImageData(0, 0, canvas.width, canvas.height).data; }
  catch (error) { return {complete: img.complete, width: img.naturalWidth, std: -1, error: String(error)}; }
  let sum = 0, squares = 0, n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const grey = (data[i] + data[i + 1] + data[i + 2]) / 3; sum += grey; squares += grey * grey; n += 1;
  }
  const mean = sum / Math.max(n, 1);
  return {complete: img.complete, width: img.naturalWidth, std: Math.sqrt(Math.max(squares / Math.max(n, 1) - mean * mean, 0))};
})"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_page_in_a_headless_browser(report) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright driver is not installed (make test installs it)")
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
            page.goto((report / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(PAGE_CHECK)
            headings = page.locator("h2").all_inner_texts()
            table_text = page.locator("table").first.inner_text()
        finally:
            browser.close()
    assert problems == []
    assert len(images) == len(FIGURES)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["std"] > 5.0, image
    assert "Results in the layout of the paper's Table 1" in headings
    assert "pix alone (teacher)" in table_text


def test_robustness_and_gap_tables_average_the_seeds_analyses() -> None:
    def analysed(seed: int, both: float, alone: float, noisy: float, gap: float) -> RunRecord:
        run = record("joint", seed, both, alone, 0.95, False)
        run.analysis = {"subsets": [{"present": ["pix"], "accuracy": both}, {"present": [], "accuracy": 0.1}],
                        "noise": [{"modality": "pix", "sigma": 0.0, "accuracy": both},
                                  {"modality": "pix", "sigma": 2.0, "accuracy": noisy}],
                        "modality_gap": {"pix|mor": gap}}
        return run

    groups = group_runs([analysed(0, 0.90, 0.8, 0.50, 0.30), analysed(1, 0.92, 0.8, 0.60, 0.40),
                         record("g2d", 0, 0.9, 0.9, 0.95, True)])  # G²D was not analysed: no row
    header, rows = robustness_rows(groups)
    assert header == ["model", "all present", "none (label prior)", "noise 2 std on pix"]
    assert rows == [["Joint-Train", "91.0 ± 1.4", "10.0 ± 0.0", "55.0 ± 7.1"]]
    header, rows = gap_rows(groups)
    assert header == ["model", "gap pix / mor"] and rows == [["Joint-Train", "0.350 ± 0.071"]]


def test_fifteen_models_get_fifteen_colours():
    """A Table 1 report holds 15 models: past tab10's ten, a repeated colour would merge two models' curves."""
    from g2d.results.figures import model_colours

    colours = model_colours({f"model {i}": [] for i in range(15)})
    assert len(set(colours.values())) == 15
    assert len(set(model_colours({"a": [], "b": [], "c": []}).values())) == 3
