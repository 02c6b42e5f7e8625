"""Issue 12: the distribution is ``aqueue-rabbitmq``; nothing tells anyone to install ``aqueue``.

``aqueue`` on PyPI is an unrelated project: ``pip install "aqueue[otel]"`` installed it over
this one (and removed the ``aqueue`` command). Every install line and every extra named in the
repository (docs, README, the CLI's and the library's hints, scripts, the Dockerfile) must name
``aqueue-rabbitmq``; the import package and the command stay ``aqueue``.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "aqueue-rabbitmq"

#: What is scanned: everything a user reads or runs, and the code that prints hints.
SCANNED = ["README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", "mkdocs.yml"]
SCANNED_DIRS = ["aqueue", "docs", "docker", "scripts", "examples", "benchmarks", "tests"]
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".Dockerfile", ""}

#: An install command, up to the end of the command (a line end, a comment, a closing quote).
INSTALL = re.compile(
    r"\b(?:pip3?\s+install|uv\s+(?:pip\s+install|add)|poetry\s+add|pipx\s+install)"
)
#: A requirement that names the old distribution: ``aqueue``, ``aqueue[x]``, ``aqueue==1``, ...
OLD_REQUIREMENT = re.compile(r"""^["']?aqueue(?:$|["'\[=<>~!@;\s])""")
#: An extra of the old distribution anywhere (``aqueue[otel]``), as in "needs aqueue[otel]".
OLD_EXTRA = re.compile(r"(?<![\w./-])aqueue\[")


def _files() -> list[Path]:
    files = [ROOT / name for name in SCANNED if (ROOT / name).exists()]
    for folder in SCANNED_DIRS:
        files += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file()
            and (path.suffix in SUFFIXES or path.name.endswith("Dockerfile"))
            and "__pycache__" not in path.parts
        ]
    return [path for path in files if path != Path(__file__).resolve()]


def old_install_lines(text: str) -> list[str]:
    """The lines of `text` that install, or name an extra of, the distribution ``aqueue``."""
    found = []
    for line in text.splitlines():
        if OLD_EXTRA.search(line):
            found.append(line)
            continue
        for match in INSTALL.finditer(line):
            command = re.split(r"[#`)]|&&|;", line[match.end() :])[0]
            if any(OLD_REQUIREMENT.match(token) for token in command.split()):
                found.append(line)
                break
    return found


@pytest.mark.parametrize(
    ("line", "old"),
    [
        ('pip install "aqueue[otel]"', True),
        ("pip install -U 'aqueue[metrics]'", True),
        ("pip install aqueue", True),
        ("uv add aqueue==0.9", True),
        ("it needs aqueue[redis]", True),
        ('pip install "aqueue-rabbitmq[otel]"', False),
        ('.venv/bin/pip install -e ".[redis]"   # then: .venv/bin/aqueue --help', False),
        ("aqueue worker myapp.tasks:queue", False),
    ],
)
def test_the_scanner_tells_old_install_lines(line: str, old: bool) -> None:
    """The scan below finds install lines of the old name and passes the new one."""
    assert bool(old_install_lines(line)) is old


def test_no_install_line_names_the_unrelated_aqueue_distribution() -> None:
    """No file a user reads or runs says ``pip install aqueue`` or ``aqueue[extra]``."""
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in _files()
        for line in old_install_lines(path.read_text(errors="replace"))
    ]
    assert not offenders, "\n".join(offenders)


def test_the_project_is_aqueue_rabbitmq_with_the_aqueue_command() -> None:
    """pyproject names the distribution aqueue-rabbitmq; installed, it provides ``aqueue``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert project["scripts"] == {"aqueue": "aqueue._cli:main"}
    installed = importlib.metadata.distribution(DISTRIBUTION)
    assert {ep.name for ep in installed.entry_points if ep.group == "console_scripts"} == {"aqueue"}
    assert "aqueue/__init__.py" in {str(f) for f in installed.files or ()} or (
        installed.read_text("direct_url.json") is not None  # editable: the checkout itself
    )
