"""The dashboard over HTTP on the real broker: the security model, escaping, paging, mounting,
the JSON API and the ``aqueue dashboard`` command."""

from __future__ import annotations

import base64
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

import aqueue.dashboard
from aqueue import RedisResultBackend, TaskQueue
from aqueue._client.session import Session
from aqueue._core import wire as t
from aqueue._core.types import HeaderValue
from aqueue._scheduler.scheduler import Scheduler
from aqueue._transport import OutgoingMessage
from aqueue.testing import running_worker
from tests.dashboard.conftest import WORKER, Mail
from tests.helpers.dashboard import free_port, serving
from tests.helpers.polling import wait_for
from tests.helpers.worker_process import ROOT, apps_env, aqueue_command, subprocess_env
from tests.helpers.workers import delete_topology, wait_until

pytestmark = pytest.mark.integration

AUTH = "admin:s3cret-pass"
TOKEN = "token-0123456789"  # noqa: S105 - the test's own


async def dead_letter_one(mail: Mail, to: str, password: str = "pw") -> str:  # noqa: S107
    """Run one job that fails: its id, now a dead letter of ``emails``."""
    mail.broken = True
    async with running_worker(mail.queue, WORKER) as worker:
        job = await mail.queue.enqueue(mail.send, to, password)
        await wait_until(worker, lambda stats: stats.dead_lettered == 1)
    mail.broken = False
    return job.job_id


async def put_dead_letters(session: Session, count: int) -> list[str]:
    """Publish `count` dead letters of ``emails`` as a worker writes them, in order."""
    await session.producer.declare_queue("emails")
    headers: dict[str, HeaderValue] = {
        t.HEADER_TASK: "send",
        t.HEADER_ATTEMPT: 1,
        t.HEADER_DEAD_REASON: "failed",
        t.HEADER_DEAD_QUEUE: "emails",
        t.HEADER_DEAD_ATTEMPTS: 1,
        t.HEADER_DEAD_EXC_TYPE: "ValueError",
    }
    ids = [f"job-{index:04d}" for index in range(count)]
    messages = [
        OutgoingMessage(
            session.names.dead_letter_exchange, "emails", b'{"args": [], "kwargs": {}}', i, headers
        )
        for i in ids
    ]
    assert await session.producer.publish_many(messages) == []
    return ids


@pytest.fixture
async def client(mail: Mail) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the admin-enabled dashboard of `mail` (Basic and token)."""
    web = aqueue.dashboard.app(mail.queue, auth=AUTH, token=TOKEN)
    async with mail.queue, serving(web) as url, httpx.AsyncClient(base_url=url) as http:
        yield http


def basic(credential: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_unauthenticated_replay_purge_and_cancel_are_refused_and_change_nothing(
    mail: Mail, client: httpx.AsyncClient
) -> None:
    """No credential, a wrong one, Basic without the CSRF token, another origin: 401/403."""
    job_id = await dead_letter_one(mail, "a@example.com")
    dlq = mail.queue.dead_letters("emails")
    attempts = [
        ({}, 401),
        (basic("admin:wrong"), 401),
        ({"Authorization": "Bearer wrong-token-000"}, 401),
        (basic(AUTH), 403),  # Basic needs the CSRF token: a browser sends Basic by itself
        ({**basic(AUTH), "X-CSRF-Token": "0" * 64}, 403),
        ({**BEARER, "Origin": "http://evil.example"}, 403),
    ]
    for headers, status in attempts:
        for path, body in (
            ("/api/queues/emails/replay", {"all": True}),
            ("/api/queues/emails/purge", {"confirm": "emails"}),
            (f"/api/jobs/{job_id}/cancel", {}),
        ):
            answer = await client.post(path, json=body, headers=headers)
            assert answer.status_code == status, (path, headers, answer.text)
    assert await dlq.count() == 1
    state = await mail.queue.job(job_id).state()
    assert state is not None
    assert state.status.value == "failed"  # not cancelled either

    login = await client.get("/login")
    assert login.status_code == 401
    assert login.headers["www-authenticate"].startswith("Basic ")
    assert (await client.get("/login", headers=basic(AUTH))).status_code == 303
    assert (await client.get("/api/csrf")).status_code == 401
    csrf = (await client.get("/api/csrf", headers=basic(AUTH))).json()["csrf_token"]
    unconfirmed = await client.post(
        "/api/queues/emails/purge", json={}, headers={**basic(AUTH), "X-CSRF-Token": csrf}
    )
    assert unconfirmed.status_code == 400
    assert await dlq.count() == 1
    purged = await client.post(
        "/api/queues/emails/purge",
        json={"confirm": "emails"},
        headers={**basic(AUTH), "X-CSRF-Token": csrf},
    )
    assert purged.json() == {"purged": 1}
    assert await dlq.count() == 0


async def test_a_read_only_dashboard_refuses_every_action(mail: Mail) -> None:
    """Without an admin credential configured, actions answer 403 whatever is sent."""
    job_id = await dead_letter_one(mail, "a@example.com")
    web = aqueue.dashboard.app(mail.queue)
    async with mail.queue, serving(web) as url, httpx.AsyncClient(base_url=url) as http:
        for headers in ({}, BEARER, basic(AUTH)):
            answer = await http.post(
                "/api/queues/emails/replay", json={"all": True}, headers=headers
            )
            assert answer.status_code == 403
            assert "read-only" in answer.json()["error"]
        page = await http.get("/queues/emails/dead-letters")
        assert job_id in page.text
        assert "Replay all" not in page.text  # no buttons that could only fail
        assert await mail.queue.dead_letters("emails").count() == 1


async def test_a_script_argument_renders_as_text_and_redacted_ones_hidden(
    mail: Mail, client: httpx.AsyncClient
) -> None:
    """<script> in an argument and an exception message is escaped; password is redacted."""
    script = "<script>alert(1)</script>"
    job_id = await dead_letter_one(mail, script, password="hunter2")  # noqa: S106
    listing = await client.get("/queues/emails/dead-letters")
    detail = await client.get(f"/queues/emails/dead-letters/{job_id}")
    for page in (listing, detail):
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "hunter2" not in detail.text
    assert "[redacted]" in detail.text


async def test_dead_letters_are_paged_newest_first(mail: Mail, client: httpx.AsyncClient) -> None:
    """120 dead letters: pages of 50, newest first, in the HTML and in the JSON API."""
    async with mail.queue.session() as session:
        ids = await put_dead_letters(session, 120)
    first = (await client.get("/api/queues/emails/dead-letters")).json()
    assert first["count"] == 120
    assert [x["job_id"] for x in first["dead_letters"]] == ids[::-1][:50]
    last = (await client.get("/api/queues/emails/dead-letters?offset=100")).json()
    assert [x["job_id"] for x in last["dead_letters"]] == ids[::-1][100:]
    html = (await client.get("/queues/emails/dead-letters?offset=50")).text
    assert html.count("<tr data-job=") == 50
    assert 'data-job="job-0069"' in html
    assert 'data-job="job-0070"' not in html
    assert "showing 51-100 of 120" in html
    assert (await client.get("/api/queues/emails/dead-letters?offset=x")).status_code == 400


async def test_replay_by_token_takes_only_the_selected_dead_letters(
    mail: Mail, client: httpx.AsyncClient
) -> None:
    """``job_id``s replay those jobs: they run; the others stay, and the summary follows."""
    async with mail.queue.session() as session:
        ids = await put_dead_letters(session, 3)
    assert len((await client.get("/api/queues/emails/dead-letters")).json()["dead_letters"]) == 3
    answer = await client.post(
        "/api/queues/emails/replay", json={"job_ids": [ids[1]]}, headers=BEARER
    )
    assert answer.json() == {"replayed": 1, "skipped": 2}
    listed = (await client.get("/api/queues/emails/dead-letters")).json()
    assert [x["job_id"] for x in listed["dead_letters"]] == [ids[2], ids[0]]
    assert await mail.queue.dead_letters("emails").count() == 2
    missing = await client.post("/api/queues/emails/replay", json={}, headers=BEARER)
    assert missing.status_code == 400


async def test_the_job_screen_and_cancel(mail: Mail, client: httpx.AsyncClient) -> None:
    """A finished job shows its state and result; a queued one is cancelled by the API."""
    async with running_worker(mail.queue, WORKER) as worker:
        done = await mail.queue.enqueue(mail.send, "a@example.com", "pw")
        await wait_until(worker, lambda stats: stats.succeeded == 1)
    page = await client.get(f"/jobs/{done.job_id}")
    assert "succeeded" in page.text
    assert "sent to a@example.com" in page.text
    assert (await client.get(f"/api/jobs/{done.job_id}")).json()["state"]["status"] == "succeeded"
    waiting = await mail.queue.enqueue(mail.send, "b@example.com", "pw")
    answer = await client.post(f"/api/jobs/{waiting.job_id}/cancel", headers=BEARER)
    assert answer.json() == {"cancelled": True}
    state = await mail.queue.job(waiting.job_id).state()
    assert state is not None
    assert state.status.value == "cancelled"
    unknown = (await client.get("/api/jobs/no-such-job")).json()
    assert unknown == {"job_id": "no-such-job", "state": None}


async def test_mounted_in_a_fastapi_app(mail: Mail) -> None:
    """Under ``/aqueue`` of a FastAPI app: pages, links and the API all carry the prefix.

    The dashboard opens the queue on its first request; the host app's lifespan runs the
    dashboard's (a mounted app's own is not run), which closes it, as the docs show.
    """
    board = aqueue.dashboard.app(mail.queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with board.router.lifespan_context(board):
            yield

    web = FastAPI(lifespan=lifespan)
    web.mount("/aqueue", board)
    async with serving(web) as url, httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/aqueue/")
        assert page.status_code == 200
        assert f"{url}/aqueue/static/dashboard.css" in page.text
        assert 'data-queue="emails"' in page.text
        assert (await http.get("/aqueue/static/dashboard.js")).status_code == 200
        overview = (await http.get("/aqueue/api/overview")).json()
        assert [q["queue"] for q in overview["queues"]] == ["emails"]
        assert (await http.get("/aqueue/queues/emails/dead-letters")).status_code == 200


def test_the_command_refuses_bad_arguments_before_connecting() -> None:
    """A malformed --auth, a short token or a trace URL without {trace_id}: exit 2, clearly."""
    env = subprocess_env(apps_env("amqp://guest:guest@127.0.0.1:1/", "unused"))
    for args, message in (
        (("--auth", "nocolon"), "user:password"),
        (("--token", "short"), "8 characters"),
        (("--trace-url", "http://jaeger/trace"), "{trace_id}"),
    ):
        done = subprocess.run(
            aqueue_command("dashboard", "tests.integration.apps.jobs:queue", *args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr


def start_dashboard(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``aqueue dashboard`` on the jobs app, its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            aqueue_command("dashboard", "tests.integration.apps.jobs:queue", "--port", str(port)),
            cwd=ROOT,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_the_command_serves_the_app(amqp_url: str, prefix: str, tmp_path: Path) -> None:
    """``aqueue dashboard APP --port N`` serves the overview of the app's queues on loopback."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    process = start_dashboard(apps_env(amqp_url, prefix), port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def answers() -> bool:
                try:
                    return (await http.get("/")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(answers, timeout=30, what="the dashboard", details=log.read_text)
            overview = (await http.get("/api/overview")).json()
            assert "default" in [q["queue"] for q in overview["queues"]]
        assert "read-only" in log.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
        await delete_topology(amqp_url, prefix)


async def test_schedules_and_flow_limits_are_shown(
    amqp_url: str, redis_url: str, prefix: str
) -> None:
    """The schedules screen names the leading scheduler and a schedule's last job; the
    overview shows a rate limit's state once its task ran."""
    queue = TaskQueue(
        amqp_url,
        prefix=prefix,
        name=f"{prefix}-ticks",
        results=RedisResultBackend(redis_url, prefix=prefix),
    )

    @queue.periodic(every=1, name="every-second")
    @queue.task(name="tick", rate_limit="100/s")
    async def tick() -> None: ...

    try:
        async with queue.session() as session, anyio.create_task_group() as group:
            scheduler = Scheduler(session, queue.schedules, status_interval=0.2)
            await group.start(scheduler.run)
            web = aqueue.dashboard.app(queue)
            async with serving(web) as url, httpx.AsyncClient(base_url=url) as http:

                async def led_and_ticked() -> bool:
                    page = (await http.get("/schedules")).text
                    return f"leader: {scheduler.scheduler_id}" in page and "/jobs/" in page

                await wait_for(led_and_ticked, timeout=20, what="a leader and a tick")
                async with running_worker(queue, WORKER) as worker:
                    await wait_until(worker, lambda stats: stats.succeeded >= 1)

                    async def limited() -> bool:
                        return "Flow limits" in (await http.get("/")).text

                    await wait_for(limited, timeout=10, what="the rate limit on the overview")
                    page = (await http.get("/")).text
                    assert "100/s" in page
                    assert "s reserved ahead" in page
            group.cancel_scope.cancel()
    finally:
        await delete_topology(amqp_url, prefix)
