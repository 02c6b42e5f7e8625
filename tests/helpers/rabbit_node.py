"""Private RabbitMQ nodes for fault tests: start, stop, kill -9, restart, resource alarms.

The shared broker on 127.0.0.1:5672 (and its epmd on 4369) is never touched: every node made here
runs as its own OS process group, from its own base directory, with its own HOME (and so its own
``.erlang.cookie``), its own epmd on its own port, and its own node name, AMQP port and
distribution port (see docs/rabbitmq-behaviour.md, "Running private nodes"). Nodes meant to
form a cluster (``rabbit_cluster.py``) are given one cookie and one epmd instead.

```text
<base>/                     tempfile.gettempdir()/aqueue-rabbit-XXXXXXXX
├── home/.erlang.cookie     HOME for the node and for rabbitmqctl
├── rabbitmq.conf           RABBITMQ_CONFIG_FILE (plus advanced.config, enabled_plugins,
├── rabbitmq-env.conf       RABBITMQ_CONF_ENV_FILE   so /etc/rabbitmq is never read)
├── mnesia/ log/ pid        RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, RABBITMQ_PID_FILE
├── server.out epmd.out     stdout/stderr of rabbitmq-server and epmd
└── owner.json              who owns the node: lets a later run reap what a crashed run left
```

Only processes this module started are ever signalled: the epmd it launched (by PID, which it
holds), the node's process group (the group of the ``rabbitmq-server`` script it launched; the
beam is found through the pid file and checked to be in that group), and the process groups of
its own ``rabbitmqctl`` runs. Every method is synchronous and blocks for seconds: from an async
test, call it through ``anyio.to_thread.run_sync`` while connections are open.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.helpers.tls import TestPki, make_pki

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""The Debian package's scripts; the ``/usr/sbin`` wrappers would switch to the rabbitmq user."""
EPMD = "epmd"
BASE_PREFIX = "aqueue-rabbit-"
"""Every node's base directory is ``tempfile.gettempdir()/aqueue-rabbit-*``."""
SHARED_PORTS = frozenset({4369, 5672, 6379, 15672, 25672, *range(35672, 35683)})
"""Ports of the shared node (AMQP, epmd, distribution, management, its CLI range) and Redis."""
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
CTL_TIMEOUT = 60.0
MEMORY_HIGH_WATERMARK = 0.4
"""RabbitMQ's default, written to each node's config and restored by ``set_memory_alarm(False)``."""
DIST_ON_LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"
"""Erlang distribution listens on loopback only."""
ALARM_WATERMARK = 0.0001
"""A watermark so low that the node raises its memory alarm at once."""


class RabbitNodeError(RuntimeError):
    """A private node failed to start, stop or obey; the message carries its log tail."""


def _pause(seconds: float) -> None:
    # This module is synchronous by design (it drives OS processes); it never runs on an event
    # loop unless a test calls it there, and async tests go through anyio.to_thread.
    time.sleep(seconds)  # noqa: TID251


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the node's listeners do: connections of a previous run in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout):
            return True
    except OSError:
        return False


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Where test processes reserve the ports they picked: one lock file per port, held with
#: ``flock`` for the life of the process that picked it (the kernel drops the lock when that
#: process ends, however it ends), so parallel test processes (pytest-xdist workers, two suites
#: at once) never pick the same port and a killed run leaves nothing to clean up.
PORT_LOCKS = Path(tempfile.gettempdir()) / "aqueue-test-ports"
_reserved: dict[int, int] = {}
"""port -> the descriptor holding its lock, for this process."""


def _reserve(port: int) -> bool:
    """Take ``port`` for this process unless another test process holds it."""
    if port in _reserved:
        return False
    PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _reserved[port] = fd
    return True


def free_ports(count: int) -> list[int]:
    """Pick ``count`` distinct free loopback ports below the kernel's ephemeral range.

    Outgoing connections take their local ports from the ephemeral range, so a port picked
    below it stays free between this check and the node binding it; other test processes
    cannot pick it either, because each pick is reserved (``PORT_LOCKS``) until this process
    ends. A private node keeps its ports across restarts, so they are never given back early.
    """
    high = min(_ephemeral_low(), 32768)
    low = 20000 if high > 21000 else 10000
    picked: list[int] = []
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in SHARED_PORTS or port in picked or not _port_is_free(port):
            continue
        if not _reserve(port):
            continue
        picked.append(port)
        if len(picked) == count:
            return picked
    raise RabbitNodeError(f"found only {len(picked)} of {count} free ports in {low}-{high}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:])


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of ``pid`` from ``/proc/PID/stat``, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces and parens
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """``root`` and every live process below it, as {pid: start time}.

    A start time pins a PID to one process, so a PID reused later is never mistaken for it.
    Children that left the process group (``erl_child_setup`` calls ``setsid``) are found too.
    """
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in found:
            found[pid] = starts[pid]
            todo.extend(children.get(pid, ()))
    return found


def still_running(processes: Mapping[int, int]) -> list[int]:
    """The PIDs of ``processes`` ({pid: start time}) that still run (zombies count as gone)."""
    alive: list[int] = []
    for pid, start in processes.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[2] == start and stat[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _finish_off(processes: Mapping[int, int], grace: float = 5.0) -> None:
    """Give ``processes`` ``grace`` seconds to exit, then SIGKILL the ones still running."""
    deadline = time.monotonic() + grace
    while (alive := still_running(processes)) and time.monotonic() < deadline:
        _pause(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class _Group:
    """One child process started in its own session, hence its own process group.

    The group id is the child's PID. The child is never reaped before its group has been
    signalled, so the PID (and group id) cannot be reused by another process while this object
    might still signal it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        output: Path | None = None,
        executable: str | None = None,
    ) -> None:
        out: IO[bytes] | int
        out = output.open("ab") if output is not None else subprocess.PIPE
        try:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                executable=executable,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.pid = self.popen.pid

    def exited(self) -> bool:
        """Whether the leader has exited (without reaping it: its PID stays reserved)."""
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # pragma: no cover - reaped behind our back
            return True
        return info is not None

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the leader to exit; never reaps it."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            _pause(0.05)
        return True

    def contains(self, pid: int) -> bool:
        """Whether ``pid`` is a live member of this process group."""
        try:
            return os.getpgid(pid) == self.pid
        except ProcessLookupError:
            return False

    def signal(self, signum: int) -> None:
        """Signal the leader only."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill_and_reap(self) -> int:
        """SIGKILL whatever is left of the group, then reap the leader; returns its exit code."""
        if self.popen.returncode is None:
            # The leader is alive or an unreaped zombie, so the group id is still ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        return self.popen.wait()

    def communicate(self, timeout: float) -> tuple[int, str]:
        """Wait for a piped child; on timeout kill its whole group. Returns (code, output)."""
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_and_reap()
            self.popen.communicate()
            raise
        return self.popen.returncode, out.decode(errors="replace") if out else ""


class Epmd:
    """An epmd of our own, on its own loopback port, run in the foreground so its PID is known.

    ``argv[0]`` carries the base directory, so a later run can recognise an epmd a crashed
    run left behind (``reap_stale``) by its command line alone.
    """

    def __init__(self, base_dir: Path, port: int) -> None:
        self.base_dir = base_dir
        self.port = port
        self._group: _Group | None = None

    @property
    def pid(self) -> int | None:
        return self._group.pid if self._group is not None else None

    def start(self, timeout: float = 10.0) -> None:
        if self._group is not None and not self._group.exited():
            return
        if not _port_is_free(self.port):
            raise RabbitNodeError(f"epmd port {self.port} is taken")
        env = _clean_env()
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        self._group = _Group(
            [f"epmd[{self.base_dir}]", "-port", str(self.port)],
            executable=shutil.which(EPMD) or EPMD,
            env=env,
            cwd=self.base_dir,
            output=self.base_dir / "epmd.out",
        )
        deadline = time.monotonic() + timeout
        while not _port_answers(self.port):
            if self._group.exited() or time.monotonic() >= deadline:
                self.stop()
                raise RabbitNodeError(
                    f"epmd on port {self.port} did not come up:\n"
                    + _tail(self.base_dir / "epmd.out")
                )
            _pause(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        group.signal(signal.SIGTERM)
        group.wait_exited(timeout)
        group.kill_and_reap()


def _clean_env() -> dict[str, str]:
    """The caller's environment minus anything that could steer Erlang or RabbitMQ elsewhere."""
    drop_prefixes = ("RABBITMQ_", "ERL_", "CONF_ENV_FILE", "NODENAME", "NODE_", "EPMD")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


_LIVE: weakref.WeakSet[RabbitNode] = weakref.WeakSet()


@atexit.register
def _cleanup_live_nodes() -> None:  # pragma: no cover - only when a test run is torn down hard
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.cleanup()


class RabbitNode:
    """One private RabbitMQ node (Debian's 3.10 package), owned by this process.

    Args:
        base_dir: where everything of the node lives; a fresh temp dir by default. Removed by
            ``cleanup()`` only if this object created it.
        name: the short node name (``<name>@localhost``); unique by default.
        plugins: plugins to enable (none by default: the node starts faster).
        config: extra ``rabbitmq.conf`` lines.
        cookie: the Erlang cookie; a random one by default. Nodes of one cluster (and the
            ``rabbitmqctl`` that joins them) must share it.
        epmd: an epmd that the caller owns (started before `start`, stopped after `cleanup`);
            by default the node has one of its own. Nodes of one cluster must register with
            the same epmd, or they cannot find each other by name: ``<name>@localhost`` is
            resolved by asking the epmd on ``ERL_EPMD_PORT`` of localhost.
        tls: also listen for AMQP over TLS on `tls_port` (loopback only): ``True`` makes a
            test PKI in ``<base>/tls`` (`tests.helpers.tls.make_pki`), or pass one made
            elsewhere (for other server names). The plain listener stays: the readiness check
            and `url` use it. Client certificates are asked for and verified against the
            PKI's CA, but not required.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        name: str | None = None,
        plugins: Sequence[str] = (),
        config: Sequence[str] = (),
        cookie: str | None = None,
        epmd: Epmd | None = None,
        tls: bool | TestPki = False,
    ) -> None:
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix=BASE_PREFIX)) if base_dir is None else base_dir
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.name = name or f"aqt{secrets.token_hex(4)}"
        self.nodename = f"{self.name}@localhost"
        self._owns_epmd = epmd is None
        ports = free_ports((3 if epmd is None else 2) + (1 if tls else 0))
        self.port, self.dist_port = ports[0], ports[1]
        if epmd is None:
            epmd = Epmd(self.base_dir, ports[2])
        self.epmd = epmd
        self._cookie = cookie
        self.tls_port: int | None = ports[-1] if tls else None
        """The AMQPS port (None without ``tls``)."""
        self.pki: TestPki | None = tls if isinstance(tls, TestPki) else None
        """The CA, server and client certificates of the TLS listener (None without ``tls``)."""
        if tls is True:
            try:
                self.pki = make_pki(self.base_dir / "tls")
            except BaseException:
                if self._owns_dir:  # nothing else would remove it: owner.json is not written
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                raise
        self.pid_file = self.base_dir / "pid"
        self.log_dir = self.base_dir / "log"
        self.start_seconds: list[float] = []
        """Wall time of each ``start()`` (process launch to ``rabbitmqctl wait`` returning)."""
        self._server: _Group | None = None
        self._tree: dict[int, int] = {}
        """The server's process tree as last seen, so helpers that outlive it are found."""
        self._cleaned = False
        self._write_files(plugins, [*self._tls_config(), *config])
        _LIVE.add(self)

    # -- public surface ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The AMQP URL of this node (guest may log in: the connection comes from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        """The AMQPS URL of this node, by the name its server certificate is for.

        No ``cafile`` in it: the client must be told to trust the PKI's CA (``?cafile=`` or
        an ``ssl.SSLContext``), as a real client would.

        Raises:
            RabbitNodeError: the node was made without ``tls``.
        """
        if self.tls_port is None or self.pki is None:
            raise RabbitNodeError(f"{self.nodename} has no TLS listener (RabbitNode(tls=True))")
        return f"amqps://guest:guest@{self.pki.server_names[0]}:{self.tls_port}/"

    @property
    def running(self) -> bool:
        """Whether the node's server process is alive (it may still be booting)."""
        return self._server is not None and not self._server.exited()

    @property
    def pid(self) -> int | None:
        """The beam's OS PID, read from the pid file and checked to be in our process group."""
        if self._server is None:
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._server.contains(pid) else None

    def processes(self) -> dict[int, int]:
        """Every live process of the node ({pid: start time}): script, beam and its helpers."""
        if self._server is None:
            return {}
        self._tree.update(descendants(self._server.pid))
        return {pid: self._tree[pid] for pid in still_running(self._tree)}

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the node and wait until it serves AMQP; returns the seconds it took.

        Keeps whatever data the node already has (durable queues, persistent messages).
        """
        if self._cleaned:
            raise RabbitNodeError("this node was cleaned up; make a new one")
        if self.running:
            raise RabbitNodeError(f"{self.nodename} is already running")
        self._reap_server()
        for port in (self.port, self.dist_port, self.tls_port):
            if port is not None and not _port_is_free(port):
                raise RabbitNodeError(f"port {port} of {self.nodename} is taken")
        if self._owns_epmd:
            self.epmd.start()
        elif not _port_answers(self.epmd.port):
            raise RabbitNodeError(f"the shared epmd on port {self.epmd.port} is not running")
        self.pid_file.unlink(missing_ok=True)  # a stale one (after kill -9) would fool `wait`
        began = time.monotonic()
        self._server = _Group(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self.env,
            cwd=self.base_dir,
            output=self.base_dir / "server.out",
        )
        self._wait_started(began + timeout)
        elapsed = time.monotonic() - began
        self._tree = descendants(self._server.pid)
        self.start_seconds.append(elapsed)
        return elapsed

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``); data stays. Falls back to SIGKILL."""
        if self._server is None:
            return
        self.processes()  # remember the helpers, which outlive the beam by a moment
        if self.running:
            try:
                self.ctl("stop", str(self.pid_file), timeout=timeout)
            except (RabbitNodeError, subprocess.TimeoutExpired):
                self._server.signal(signal.SIGTERM)
            if not self._server.wait_exited(timeout):
                self.kill()
                return
        self._reap_server()

    def kill(self) -> None:
        """SIGKILL the node's beam (no shutdown at all, as a crash or ``kill -9`` would).

        Measured on 3.10.8: a quorum queue declared less than ~1 s before its only node is
        killed comes back without a leader, for good (its Ra log was not yet durable), and every
        operation on it then times out. Let a fresh queue settle for 2 s before ``kill()``;
        confirmed messages in an older queue survive a kill right after the confirm.
        """
        if self._server is None:
            return
        self.processes()
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # The wrapper script waits on the beam and exits right after it.
            self._server.wait_exited(10.0)
        # Still booting (no pid file yet) or a straggler: the whole group goes.
        self._reap_server()

    def restart(self, timeout: float = START_TIMEOUT) -> float:
        """Stop gracefully and start again with the same name, ports and data."""
        self.stop()
        return self.start(timeout)

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` with this node's environment; returns stdout.

        Raises:
            RabbitNodeError: the command exited non-zero (and ``check`` is true).
            subprocess.TimeoutExpired: it ran longer than ``timeout`` (its process group is
                killed first).
        """
        argv = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args]
        group = _Group(argv, env=self.env, cwd=self.base_dir)
        code, out = group.communicate(timeout)
        if check and code != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} exited {code}:\n{out}")
        return out

    def close_all_connections(self, reason: str = "closed by test") -> None:
        """Close every client connection (clients see a broker-initiated close, 320)."""
        self.ctl("close_all_connections", reason)

    def set_memory_alarm(self, on: bool) -> None:
        """Raise (``True``) or clear the node's memory alarm via the high watermark."""
        watermark = ALARM_WATERMARK if on else MEMORY_HIGH_WATERMARK
        self.ctl("set_vm_memory_high_watermark", str(watermark))

    def cleanup(self) -> None:
        """Stop the node, stop its own epmd (not a shared one), remove its directory; idempotent.

        A node whose directory this object made is killed (its data is about to go, and a
        graceful stop costs seconds); one in a caller's directory is stopped gracefully. Either
        way no process of the node is left behind.
        """
        if self._cleaned:
            return
        try:
            if self._owns_dir:
                self.kill()
            else:
                self.stop(timeout=20.0)
        finally:
            self._reap_server()
            if self._owns_epmd:
                self.epmd.stop()
            self._cleaned = True
            _LIVE.discard(self)
            if self._owns_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the node's log and of its server script output, for error messages."""
        return "\n".join(
            [
                f"--- {self.log_dir / f'{self.nodename}.log'}",
                _tail(self.log_dir / f"{self.nodename}.log", lines),
                f"--- {self.base_dir / 'server.out'}",
                _tail(self.base_dir / "server.out", lines),
            ]
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment for ``rabbitmq-server`` and ``rabbitmqctl`` of this node."""
        base = self.base_dir
        env = _clean_env()
        env.update(
            {
                "HOME": str(base / "home"),
                "ERL_EPMD_PORT": str(self.epmd.port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": DIST_ON_LOOPBACK,
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.log_dir),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            }
        )
        return env

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitNode {self.nodename} {self.url} {state} at {self.base_dir}>"

    # -- internals --------------------------------------------------------------------------

    def _tls_config(self) -> list[str]:
        if self.pki is None or self.tls_port is None:
            return []
        pki = self.pki
        return [
            # on loopback, as the plain listener is (RABBITMQ_NODE_IP_ADDRESS)
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}",
            f"ssl_options.cacertfile = {pki.ca}",
            f"ssl_options.certfile = {pki.server_cert}",
            f"ssl_options.keyfile = {pki.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ]

    def _write_files(self, plugins: Sequence[str], config: Sequence[str]) -> None:
        base = self.base_dir
        home = base / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if self._cookie is not None or not cookie.exists():
            if cookie.exists():  # read-only, as Erlang insists
                cookie.chmod(0o600)
            cookie.write_text(self._cookie or secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(exist_ok=True)
        lines = [
            f"vm_memory_high_watermark.relative = {MEMORY_HIGH_WATERMARK}",
            "log.console = false",
            "log.file.level = info",
            *config,
        ]
        (base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (base / "advanced.config").write_text("[].\n")
        (base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (base / "rabbitmq-env.conf").write_text(
            "# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n"
        )
        owner = {"owner_pid": os.getpid(), "nodename": self.nodename, "epmd_port": self.epmd.port}
        (base / "owner.json").write_text(json.dumps(owner))

    def _wait_started(self, deadline: float) -> None:
        assert self._server is not None
        timeout = max(1, int(deadline - time.monotonic()))
        argv = [
            str(RABBITMQ_BIN / "rabbitmqctl"),
            "-n",
            self.nodename,
            "wait",
            str(self.pid_file),
            "--timeout",
            str(timeout),
        ]
        wait_out = self.base_dir / "wait.out"
        wait_out.unlink(missing_ok=True)
        waiter = _Group(argv, env=self.env, cwd=self.base_dir, output=wait_out)
        # `wait` alone would sit out its whole timeout if the server died before writing its
        # pid file, so watch both.
        while not waiter.exited() and not self._server.exited():
            if time.monotonic() > deadline + 5:
                break
            _pause(0.05)
        waited = waiter.exited()
        code = waiter.kill_and_reap()
        if waited and code == 0 and not self._server.exited() and _port_answers(self.port):
            return
        self._reap_server()
        raise RabbitNodeError(
            f"{self.nodename} did not start on port {self.port} (rabbitmqctl wait exited {code}):\n"
            f"{_tail(wait_out)}\n{self.log_tail()}"
        )

    def _reap_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        tree = {**self._tree, **descendants(server.pid)}
        self._tree = {}
        server.kill_and_reap()
        _finish_off(tree)


def processes_of(base_dir: Path) -> list[int]:
    """PIDs whose command line names ``base_dir``: a node's beam (``-home <base>/home``), its epmd.

    Command lines are public (``ps`` shows them); nothing else of other processes is read.
    """
    marker = str(base_dir).encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker + b"/" in cmdline or marker + b"]" in cmdline:
            found.append(int(entry.name))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_base_dirs() -> Iterator[Path]:
    """Base dirs of nodes whose owning process is gone (a crashed or killed test run)."""
    for base in Path(tempfile.gettempdir()).glob(f"{BASE_PREFIX}*"):
        try:
            owner = json.loads((base / "owner.json").read_text())["owner_pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(owner, int) and owner != os.getpid() and not _pid_alive(owner):
            yield base


def _exiting(pid: int) -> bool:
    """True while `pid` exists and is not yet a zombie (it may still hold its sockets)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def reap_stale() -> list[Path]:
    """SIGKILL what dead test runs left (only processes naming their base dir); remove the dirs."""
    reaped: list[Path] = []
    for base in stale_base_dirs():
        killed = processes_of(base)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # SIGKILL is asynchronous, and a dying process loses its command line before it closes
        # its sockets: wait until each is a zombie or gone (its listeners closed by then)
        deadline = time.monotonic() + 10
        while any(_exiting(pid) for pid in killed) and time.monotonic() < deadline:
            _pause(0.05)
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(base)
    return reaped
