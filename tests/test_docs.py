"""Every Python sample in README.md and docs/*.md compiles, and the in-memory ones run.

The convention, stated on the testing page:

- every fenced ````python`` block is compiled;
- a block that mentions ``memory://`` (the in-process broker) is also executed, in-process, in
  a fresh module of its own: it must be complete and must not need RabbitMQ;
- a block right after a ``<!-- test: skip -->`` line is neither (for deliberate fragments).

Blocks that talk to RabbitMQ (``amqp://``) or import packages aqueue does not depend on
(FastAPI) are compiled only.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = "<!-- test: skip -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[^\n]*$")


@dataclass(frozen=True)
class Sample:
    """One fenced Python block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    skipped: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return "memory://" in self.code


def extract(page: Path) -> list[Sample]:
    """The ```python blocks of one page, with their indentation removed."""
    samples: list[Sample] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, lang = opening["indent"], opening["lang"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang in ("python", "py"):
            body = [
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[index + 1 : end]
            ]
            previous = next(
                (lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), ""
            )
            samples.append(Sample(page, index + 1, "\n".join(body) + "\n", previous == SKIP_MARKER))
        index = end + 1
    return samples


SAMPLES = [sample for page in PAGES if page.exists() for sample in extract(page)]


def test_the_pages_have_samples() -> None:
    """The extractor finds the samples (a broken fence pattern would silently test nothing)."""
    assert len(SAMPLES) >= 10, [sample.id for sample in SAMPLES]
    assert any(sample.runs for sample in SAMPLES if sample.page.name == "README.md")


@pytest.mark.parametrize("sample", [s for s in SAMPLES if not s.skipped], ids=lambda s: s.id)
def test_sample_compiles(sample: Sample) -> None:
    """Every Python block is valid Python."""
    compile(sample.code, sample.id, "exec")


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.runs and not s.skipped], ids=lambda s: s.id
)
def test_in_memory_sample_runs(sample: Sample) -> None:
    """Every block that uses the in-memory broker runs to the end without RabbitMQ."""
    assert "amqp://" not in sample.code, "a runnable sample must not need RabbitMQ"
    name = "docs_sample_" + re.sub(r"\W", "_", sample.id)
    module = types.ModuleType(name)
    module.__file__ = str(sample.page)
    sys.modules[name] = module  # dataclasses and typing look their module up here
    try:
        exec(compile(sample.code, sample.id, "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[name]
