"""A throwaway certificate authority for TLS tests, made with the ``openssl`` command.

```text
<directory>/
├── ca.pem ca.key               the test CA (self-signed)
├── server.pem server.key       signed by it, for `server_names` (default localhost, 127.0.0.1)
├── client.pem client.key       signed by it, CN=aqueue-test-client (a client certificate)
└── wrong-ca.pem wrong-ca.key   an unrelated CA: trusting it instead of ca.pem must fail
```

Keys are ECDSA P-256 (fast to make; RabbitMQ's Erlang and Python's OpenSSL both take them) and
unencrypted; certificates last two days. The extensions are the ones strict verifiers ask for
(Python 3.13 turns on ``VERIFY_X509_STRICT``): key usages, key identifiers, CA:FALSE on leaves.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CA_EXTENSIONS = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
]


class TlsHelperError(RuntimeError):
    """``openssl`` is missing or one of its commands failed (the message has its output)."""


@dataclass(frozen=True)
class TestPki:
    """The files of one test PKI; every path exists once `make_pki` returned."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path
    server_names: tuple[str, ...]


def openssl_available() -> bool:
    """Whether the ``openssl`` command is on PATH."""
    return shutil.which(OPENSSL) is not None


def _run(*args: str, cwd: Path) -> None:
    try:
        done = subprocess.run(
            [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise TlsHelperError(f"the {OPENSSL!r} command is not installed") from exc
    if done.returncode != 0:
        raise TlsHelperError(
            f"openssl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def _self_signed(directory: Path, name: str, common_name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _run(
        "req", "-x509", *_KEY, "-keyout", key.name, "-out", cert.name, "-days", DAYS,
        "-subj", f"/CN={common_name}", *_CA_EXTENSIONS,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _san(names: Sequence[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return ",".join(entries)


def _leaf(
    directory: Path,
    name: str,
    *,
    common_name: str,
    ca: tuple[Path, Path],
    usage: str,
    alt_names: Sequence[str] = (),
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("pem", "key", "csr"))
    extensions = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyAgreement",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if alt_names:
        lines.append(f"subjectAltName={_san(alt_names)}")
    extensions.write_text("\n".join(lines) + "\n")
    _run(
        "req", "-new", *_KEY, "-keyout", key.name, "-out", csr.name,
        "-subj", f"/CN={common_name}",
        cwd=directory,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(secrets.randbits(63)), "-days", DAYS,
        "-extfile", extensions.name, "-out", cert.name,
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    extensions.unlink()
    return cert, key


def make_pki(directory: Path, server_names: Sequence[str] = ("localhost", "127.0.0.1")) -> TestPki:
    """Make a CA, a server and a client certificate signed by it, and an unrelated CA.

    Args:
        directory: where the files go (made if missing).
        server_names: the server certificate's subject alternative names (IP addresses are
            told apart from DNS names); the first is also its CN.

    Raises:
        TlsHelperError: openssl is not installed or failed.
    """
    if not server_names:
        raise ValueError("a server certificate needs at least one name")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _self_signed(directory, "ca", "aqueue test CA")
    server = _leaf(
        directory,
        "server",
        common_name=server_names[0],
        ca=ca,
        usage="serverAuth",
        alt_names=server_names,
    )
    client = _leaf(directory, "client", common_name="aqueue-test-client", ca=ca, usage="clientAuth")
    wrong_ca, _ = _self_signed(directory, "wrong-ca", "an unrelated CA")
    return TestPki(
        directory=directory,
        ca=ca[0],
        ca_key=ca[1],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        wrong_ca=wrong_ca,
        server_names=tuple(server_names),
    )


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts only `ca` (verification and hostname checks on), with an
    optional client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    return context
