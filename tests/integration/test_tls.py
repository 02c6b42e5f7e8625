"""AMQP over TLS against a private node: URL parameters, an `ssl.SSLContext`, client
certificates, and the failures a client must see at once (an untrusted CA, a wrong host name).

One node serves the whole module. Its server certificate is for ``localhost`` only (no IP
address), so connecting to ``127.0.0.1`` is a host name mismatch. A user with a password of its
own (guest's password is its name) lets the tests look for the password in what aqueue shows.
"""

from __future__ import annotations

import logging
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import redis.asyncio

from aqueue import RedisResultBackend, TaskQueue
from aqueue.exceptions import ConnectionFailed
from aqueue.testing import running_worker
from tests.helpers.rabbit_node import RabbitNode
from tests.helpers.tls import TestPki, client_context, make_pki, openssl_available
from tests.helpers.workers import delete_topology

# `fault` as well: these tests start a private node, which `-m "integration and not fault"`
# promises not to do (docs/testing.md)
pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(120)]

USER, PASSWORD = "aqtls", "s3cret-tls-pw"
#: A TLS refusal must be reported at once; the connect timeout is far longer than this.
FAST = 5.0
CONNECT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def tls_node(
    rabbit_node_support: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitNode]:
    """A started node with a TLS listener, and a user `USER` with password `PASSWORD`."""
    if not openssl_available():
        reason = "the openssl command is not installed"
        if os.environ.get("AQUEUE_REQUIRE_BROKER") == "1":
            pytest.fail(f"{reason} and AQUEUE_REQUIRE_BROKER=1", pytrace=False)
        pytest.skip(reason)
    pki = make_pki(tmp_path_factory.mktemp("pki"), server_names=("localhost",))
    node = RabbitNode(tls=pki)
    try:
        node.start()
        node.ctl("add_user", USER, PASSWORD)
        node.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def pki(tls_node: RabbitNode) -> TestPki:
    assert tls_node.pki is not None
    return tls_node.pki


@pytest.fixture
async def name(tls_node: RabbitNode) -> AsyncIterator[str]:
    """A connection name and prefix unique to the test (to find its connections); what the
    test declared under it is deleted afterwards (quorum queues cost the node memory)."""
    name = f"tls-{uuid.uuid4().hex[:8]}"
    yield name
    await delete_topology(tls_node.url, name)


def amqps(node: RabbitNode, host: str = "localhost", **params: Path | str) -> str:
    """The node's AMQPS URL for `USER`, with query parameters."""
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"amqps://{USER}:{PASSWORD}@{host}:{node.tls_port}/" + (f"?{query}" if query else "")


def connections(node: RabbitNode, name: str) -> list[tuple[str, str]]:
    """(ssl, peer certificate subject) of each connection of the node named ``name-*``."""
    out = node.ctl("list_connections", "ssl", "peer_cert_subject", "client_properties", "-q")
    found = []
    for line in out.splitlines():
        if f'{{"connection_name","{name}-' in line:
            ssl_flag, subject, _ = line.split("\t", 2)
            found.append((ssl_flag, subject))
    return found


def make_queue(url: str | list[str], name: str, **options: object) -> TaskQueue:
    queue = TaskQueue(url, prefix=name, name=name, telemetry=False, **options)  # type: ignore[arg-type]

    @queue.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    return queue


async def run_one_job(queue: TaskQueue) -> None:
    """Enqueue ``add(2, 3)`` and let a worker (over the same TLS settings) run it."""
    async with running_worker(queue) as worker:
        await queue.enqueue(queue.tasks["add"], 2, 3)
        with anyio.fail_after(20):
            await worker.wait_until(lambda stats: stats.succeeded == 1)


async def test_url_parameters_run_a_job_end_to_end_over_tls(
    tls_node: RabbitNode, pki: TestPki, name: str, redis_url: str
) -> None:
    """``amqps://localhost:PORT/?cafile=CA``: the publisher and the worker connect over TLS and
    a job's result comes back."""
    backend = RedisResultBackend(redis_url, prefix=name)
    queue = make_queue(amqps(tls_node, cafile=pki.ca), name, results=backend)
    try:
        async with queue, running_worker(queue):
            job = await queue.enqueue(queue.tasks["add"], 2, 3)
            assert await job.result(timeout=20) == 5
            seen = await anyio.to_thread.run_sync(connections, tls_node, name)
    finally:
        client = redis.asyncio.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(f"{name}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    # the publisher and the worker's consumer, every one encrypted
    assert len(seen) >= 2
    assert {flag for flag, _ in seen} == {"true"}


async def test_an_ssl_context_wins_over_the_url_parameters(
    tls_node: RabbitNode, pki: TestPki, name: str
) -> None:
    """``TaskQueue(url, ssl=context)``: the context is used, even when the URL names a CA that
    would fail (so the context reached aio-pika, and nothing fell back to the URL)."""
    queue = make_queue(amqps(tls_node, cafile=pki.wrong_ca), name, ssl=client_context(pki.ca))
    async with queue:
        await run_one_job(queue)


async def test_a_client_certificate_from_the_url_is_presented(
    tls_node: RabbitNode, pki: TestPki, name: str
) -> None:
    """``certfile=``/``keyfile=`` in the URL: the broker sees the client certificate."""
    url = amqps(tls_node, cafile=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
    queue = make_queue(url, name)
    async with queue:
        await run_one_job(queue)
        seen = await anyio.to_thread.run_sync(connections, tls_node, name)
    assert seen
    assert all("aqueue-test-client" in subject for _, subject in seen), seen


async def test_a_client_certificate_from_a_context_is_presented(
    tls_node: RabbitNode, pki: TestPki, name: str
) -> None:
    """The same certificate through ``ssl=client_context(ca, cert, key)`` (as guest, over the
    node's own `tls_url`)."""
    context = client_context(pki.ca, pki.client_cert, pki.client_key)
    queue = make_queue(tls_node.tls_url, name, ssl=context)
    async with queue:
        seen = await anyio.to_thread.run_sync(connections, tls_node, name)
    assert seen
    assert all("aqueue-test-client" in subject for _, subject in seen), seen


@pytest.mark.parametrize("how", ["url", "context"])
async def test_an_untrusted_ca_fails_at_once_naming_the_cause(
    tls_node: RabbitNode, pki: TestPki, name: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server certificate from a CA the client does not trust: `ConnectionFailed` within
    seconds (not at the connect timeout), saying the certificate did not verify."""
    if how == "url":
        queue = make_queue(
            amqps(tls_node, cafile=pki.wrong_ca), name, connect_timeout=CONNECT_TIMEOUT
        )
    else:
        queue = make_queue(
            amqps(tls_node),
            name,
            ssl=client_context(pki.wrong_ca),
            connect_timeout=CONNECT_TIMEOUT,
        )
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match="certificate verify failed") as caught:
        await queue.open()
    assert anyio.current_time() - began < FAST
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert "self-signed certificate in certificate chain" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("how", ["url", "context"])
async def test_a_host_name_the_certificate_is_not_for_fails_at_once(
    tls_node: RabbitNode, pki: TestPki, name: str, how: str
) -> None:
    """Host name checking is on: the certificate is for ``localhost``, so ``127.0.0.1`` (the
    same broker, the right CA) is refused at once."""
    if how == "url":
        queue = make_queue(amqps(tls_node, "127.0.0.1", cafile=pki.ca), name)
    else:
        queue = make_queue(amqps(tls_node, "127.0.0.1"), name, ssl=client_context(pki.ca))
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match="certificate verify failed") as caught:
        await queue.open()
    assert anyio.current_time() - began < FAST
    assert "IP address mismatch" in str(caught.value)


async def test_a_tls_url_on_the_plain_port_fails_at_once(
    tls_node: RabbitNode, pki: TestPki, name: str
) -> None:
    """``amqps://`` to the plain AMQP port: the handshake fails at once, with a hint."""
    url = f"amqps://{USER}:{PASSWORD}@localhost:{tls_node.port}/?cafile={pki.ca}"
    queue = make_queue(url, name, connect_timeout=CONNECT_TIMEOUT)
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match="is this a TLS port"):
        await queue.open()
    assert anyio.current_time() - began < FAST


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_a_client_certificate_the_broker_does_not_trust_is_reported(
    tls_node: RabbitNode, pki: TestPki, name: str, version: ssl.TLSVersion, tmp_path: Path
) -> None:
    """A client certificate from a CA the broker does not trust. TLS 1.2 refuses it in the
    handshake: reported at once. TLS 1.3 refuses it just after, and the client reads either
    the broker's alert (reported at once) or only the connection reset it races with (retried,
    then reported at ``connect_timeout``)."""
    foreign = make_pki(tmp_path / "foreign")
    context = client_context(pki.ca, foreign.client_cert, foreign.client_key)
    context.minimum_version = context.maximum_version = version
    queue = make_queue(amqps(tls_node), name, ssl=context, connect_timeout=5)
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed) as caught:
        await queue.open()
    message = str(caught.value)
    if version is ssl.TLSVersion.TLSv1_2:
        assert anyio.current_time() - began < FAST - 1
        assert "alert unknown ca" in message
    else:
        assert "alert unknown ca" in message or "Connection reset by peer" in message, message


async def test_plain_amqp_to_the_tls_port_is_retried_until_the_deadline(
    tls_node: RabbitNode, name: str
) -> None:
    """``amqp://`` to the TLS listener: the broker resets the connection, which looks like any
    network failure, so it is retried until ``connect_timeout`` and then reported."""
    queue = make_queue(
        f"amqp://{USER}:{PASSWORD}@localhost:{tls_node.tls_port}/", name, connect_timeout=2
    )
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match="no RabbitMQ answered") as caught:
        await queue.open()
    assert anyio.current_time() - began >= 2
    assert "Connection reset by peer" in str(caught.value)


async def test_one_refusing_url_does_not_stop_failover_to_a_good_one(
    tls_node: RabbitNode, pki: TestPki, name: str
) -> None:
    """Several URLs: a refusal by one is not final while another may still connect."""
    bad = amqps(tls_node, "127.0.0.1", cafile=pki.ca)  # a host name mismatch
    good = amqps(tls_node, cafile=pki.ca)
    queue = make_queue([bad, good], name)
    async with queue:
        seen = await anyio.to_thread.run_sync(connections, tls_node, name)
    assert seen


async def test_the_password_is_never_shown(
    tls_node: RabbitNode, pki: TestPki, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`TaskQueue.urls`, ``repr``, and the logs of a queue that connects and runs a job (and of
    a failed connection) mask the password; the broker still gets it."""
    caplog.set_level(logging.DEBUG)
    url = amqps(tls_node, cafile=pki.ca)
    queue = make_queue(url, name)
    assert queue.urls == (url.replace(PASSWORD, "***"),)
    assert PASSWORD not in repr(queue)
    async with queue:  # the broker accepted the real password
        await run_one_job(queue)
        async with queue.session() as session:
            assert PASSWORD not in repr(session)
    failing = make_queue(amqps(tls_node, cafile=pki.wrong_ca), f"{name}-bad")
    with pytest.raises(ConnectionFailed) as caught:
        await failing.open()
    assert PASSWORD not in str(caught.value)
    assert caplog.records
    assert PASSWORD not in caplog.text
