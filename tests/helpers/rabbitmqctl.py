"""Find and close a broker's AMQP connections by the name their client gave them.

``rabbitmqctl list_connections name`` shows ``"127.0.0.1:40000 -> 127.0.0.1:5672"``, not the
client's name: that lives in ``client_properties`` as ``{"connection_name","<name>"}``. Every
function is synchronous (it runs ``rabbitmqctl``); from async tests, call it through
``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import subprocess

RABBITMQCTL = "rabbitmqctl"
TIMEOUT = 60.0


def _ctl(*args: str, node: str | None = None) -> str:
    command = [RABBITMQCTL, "-q", *(("-n", node) if node else ()), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def connection_pids(connection_name: str, *, node: str | None = None) -> list[str]:
    """The pids (``<rabbit@host.1.2.3>``) of the connections named `connection_name`."""
    needle = f'{{"connection_name","{connection_name}"}}'
    output = _ctl("--no-table-headers", "list_connections", "pid", "client_properties", node=node)
    pids = []
    for line in output.splitlines():
        pid, _, client_properties = line.partition("\t")
        if needle in client_properties:
            pids.append(pid.strip())
    return pids


def close_connections(
    connection_name: str, reason: str = "closed by test", *, node: str | None = None
) -> int:
    """Close every connection named `connection_name` (the broker side); return how many."""
    pids = connection_pids(connection_name, node=node)
    for pid in pids:
        _ctl("close_connection", pid, reason, node=node)
    return len(pids)


def close_connection(pid: str, reason: str = "closed by test", *, node: str | None = None) -> None:
    """Close the connection `pid` (from `connection_pids`), from the broker side."""
    _ctl("close_connection", pid, reason, node=node)
