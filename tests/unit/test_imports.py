"""Where OpenTelemetry and prometheus_client may be imported, and what happens without them.

import-linter (pyproject.toml) keeps ``opentelemetry`` to ``aqueue._observability.otel`` and
the CLI's telemetry module, but can only name root packages: the API/SDK split is checked here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from aqueue._cli.telemetry import ObservabilityError, require_extra

PACKAGE = Path(__file__).resolve().parents[2] / "aqueue"
SDK_PREFIXES = ("opentelemetry.sdk", "opentelemetry.exporter")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _importers(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = {name for name in _imports(path) if name.startswith(prefixes)}
        if hits:
            found[str(path.relative_to(PACKAGE))] = hits
    return found


def test_the_sdk_and_exporters_are_imported_by_the_cli_only() -> None:
    """The library depends on the OpenTelemetry API; the SDK is the application's choice."""
    assert set(_importers(SDK_PREFIXES)) == {"_cli/telemetry.py"}


def test_the_api_is_imported_by_telemetry_and_the_cli_only() -> None:
    """Every other module reaches OpenTelemetry through the instrumentation hooks."""
    assert set(_importers(("opentelemetry",))) == {"_observability/otel.py", "_cli/telemetry.py"}


def test_prometheus_client_is_imported_by_one_module() -> None:
    """The optional metrics extra enters in one place."""
    assert set(_importers(("prometheus_client",))) == {"_observability/prometheus.py"}


def test_a_queue_without_telemetry_loads_no_opentelemetry() -> None:
    """``TaskQueue(telemetry=False)``: not even the API is imported (and the CLI module loads
    neither the SDK nor prometheus_client until an option asks for them)."""
    code = (
        "import sys, aqueue, aqueue._cli\n"
        "aqueue.TaskQueue('memory://', telemetry=False)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules\n"
        "              if m.startswith(('opentelemetry', 'prometheus_client'))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize(
    ("option", "extra", "module"),
    [
        ("--otel", "otel", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        ("--metrics-port", "metrics", "prometheus_client"),
    ],
)
def test_a_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, option: str, extra: str, module: str
) -> None:
    """The error says which option needs what, and the pip command that installs it."""
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ObservabilityError) as caught:
        require_extra(option, extra, [module])
    assert str(caught.value).startswith(
        f"{option} needs the optional dependencies of aqueue-rabbitmq[{extra}]: "
        f'pip install "aqueue-rabbitmq[{extra}]"'
    )


def test_the_redis_backend_without_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: ``aqueue.RedisResultBackend`` without redis installed raises aqueue's own
    error (an ImportError too) naming the extra and the pip line, not ``No module named``."""
    import aqueue
    from aqueue.exceptions import MissingDependency

    for module in ("redis", "redis.asyncio", "redis.exceptions"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.delitem(sys.modules, "aqueue._results.redis_backend", raising=False)
    with pytest.raises(MissingDependency) as caught:
        _ = aqueue.RedisResultBackend
    assert isinstance(caught.value, ImportError)
    assert str(caught.value).startswith(
        "RedisResultBackend needs the optional dependencies of aqueue-rabbitmq[redis]: "
        'pip install "aqueue-rabbitmq[redis]"'
    )
