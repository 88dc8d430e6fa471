"""docs/api.md runs: every python block, in order, in one namespace (issue 22 item 7)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_every_python_block_of_the_api_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lightning")
    text = DOC.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 4
    (tmp_path / "configs").symlink_to(DOC.parents[1] / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "api_doc"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {index + 1}", "exec"), namespace)
    assert namespace["metrics"]["method"] == "g2d"
    assert namespace["kappa"] == {"pix": 1.0, "mor": 1.0}  # the last epoch of 3 trains both views
    assert set(namespace["confidences"]) == {"image", "signal"}  # "Your own model and teachers"
    assert not namespace["teachers"]["image"].training  # a parent's .train() left the teacher in eval


def test_the_counted_lines_are_the_marked_ones() -> None:
    """Each section that marks lines `# G²D` states their number, in bold, first."""
    counted = 0
    for section in re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE):
        marked = sum(line.rstrip().endswith("# G²D") for block in python_blocks(section) for line in block.splitlines())
        if marked:
            assert re.search(r"\*\*(\d+) lines\*\*", section).group(1) == str(marked), section.splitlines()[0]
            counted += 1
    assert counted == 2  # the two-encoder model and "Your own model and teachers"
