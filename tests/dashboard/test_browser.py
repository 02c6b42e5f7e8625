"""The dashboard in a real browser: Debian's chromium driven by Playwright, real RabbitMQ.

Screenshots of the screens are taken on the way (into the test's tmp dir; into docs/images
with ``AQUEUE_DOCS_SCREENSHOTS=1``, which is how the docs' images are made).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Browser, Page, expect

import aqueue.dashboard
from aqueue import TaskQueue, WorkerSettings
from aqueue._core.config import Autoscale
from aqueue.testing import running_worker
from tests.dashboard.conftest import SECRET, WORKER, Flaky, Mail
from tests.helpers.dashboard import SCREENSHOTS, browser, serving
from tests.helpers.workers import delete_topology, wait_until

pytestmark = pytest.mark.integration

ADMIN = ("admin", "s3cret-pass")
#: What a browser assertion waits at most (the pages refresh every 0.3 s here).
WAIT_MS = 15_000


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with browser() as launched:
        yield launched


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/images when asked for, else the test's tmp dir."""
    return SCREENSHOTS if os.environ.get("AQUEUE_DOCS_SCREENSHOTS") == "1" else tmp_path


async def shoot(page: Page, where: Path, name: str) -> None:
    path = where / f"dashboard-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


async def test_overview_lists_a_queue_with_its_backlog(
    mail: Mail, chromium: Browser, shots: Path
) -> None:
    """Three jobs waiting on ``emails`` show as its ready count on the overview."""
    async with mail.queue:
        for to in ("a@example.com", "b@example.com", "c@example.com"):
            await mail.queue.enqueue(mail.send, to, "pw")
        web = aqueue.dashboard.app(mail.queue, refresh=0.3)
        async with serving(web) as url:
            page = await chromium.new_page()
            await page.goto(url + "/")
            row = page.locator('tr[data-queue="emails"]')
            await expect(row.locator("td.ready")).to_have_text("3", timeout=WAIT_MS)
            await expect(row.locator("td.consumers")).to_have_text("0")
            await shoot(page, shots, "overview-backlog")


async def test_live_view_updates_when_jobs_run(mail: Mail, chromium: Browser, shots: Path) -> None:
    """Without a reload, the backlog drains to 0 and the worker appears once one runs."""
    async with mail.queue:
        for index in range(5):
            await mail.queue.enqueue(mail.send, f"user{index}@example.com", "pw")
        web = aqueue.dashboard.app(mail.queue, refresh=0.3)
        async with serving(web) as url:
            page = await chromium.new_page()
            await page.goto(url + "/")
            ready = page.locator('tr[data-queue="emails"] td.ready')
            await expect(ready).to_have_text("5", timeout=WAIT_MS)
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            async with running_worker(mail.queue, WORKER) as worker:
                await wait_until(worker, lambda stats: stats.succeeded == 5)
                await expect(ready).to_have_text("0", timeout=WAIT_MS)
                await expect(page.locator("p.updated")).to_contain_text(
                    "1 live worker", timeout=WAIT_MS
                )
                await shoot(page, shots, "overview")
                workers = await chromium.new_page()
                await workers.goto(url + "/workers")
                await expect(workers.locator("tr[data-worker] td.pid")).to_have_text(
                    str(os.getpid()), timeout=WAIT_MS
                )
                await shoot(workers, shots, "workers")
            assert navigations == []  # the numbers changed in place: no reload


async def test_a_dead_letter_is_found_opened_replayed_and_gone(
    mail: Mail, chromium: Browser, shots: Path
) -> None:
    """A failed job's dead letter is listed, opened (its <script> argument shown as text,
    its password redacted), replayed by the admin; it runs, and the queue shows none."""
    script = "<script>window.__xss = 1</script>"
    async with mail.queue:
        mail.broken = True
        async with running_worker(mail.queue, WORKER) as worker:
            job = await mail.queue.enqueue(mail.send, script, "hunter2")
            await wait_until(worker, lambda stats: stats.dead_lettered == 1)
        web = aqueue.dashboard.app(mail.queue, auth=":".join(ADMIN), refresh=0.3)
        async with serving(web) as url:
            context = await chromium.new_context(
                http_credentials={"username": ADMIN[0], "password": ADMIN[1]}
            )
            page = await context.new_page()
            await page.goto(url + "/")
            dead = page.locator('tr[data-queue="emails"] td.dead a')
            await expect(dead).to_have_text("1", timeout=WAIT_MS)
            await dead.click()
            row = page.locator(f'tr[data-job="{job.job_id}"]')
            await expect(row).to_contain_text("ValueError")
            await expect(row).to_contain_text(f"cannot send to {script}")  # as text
            await shoot(page, shots, "dead-letters")
            await row.locator("a").click()
            arguments = page.locator("pre.arguments")
            await expect(arguments).to_contain_text(script)
            await expect(arguments).to_contain_text("[redacted]")
            assert "hunter2" not in await page.content()
            assert await page.evaluate("window.__xss") is None  # never ran
            await expect(page.locator("pre.traceback")).to_contain_text("ValueError")
            await shoot(page, shots, "dead-letter")
            mail.broken = False
            async with running_worker(mail.queue, WORKER) as worker:
                await page.get_by_role("button", name="Replay this job").click()
                await wait_until(worker, lambda stats: stats.succeeded == 1)
            assert mail.sent == [script]
            await expect(page.locator("table.dead-letters")).to_contain_text("no dead letters")
            await page.goto(url + "/")
            await expect(page.locator('tr[data-queue="emails"] td.dead')).to_have_text("0")
            await page.goto(f"{url}/jobs/{job.job_id}")
            await expect(page.locator("td.status")).to_have_text("succeeded")
            await shoot(page, shots, "job")


async def test_an_action_without_credentials_is_refused(mail: Mail, chromium: Browser) -> None:
    """A replay and a purge posted from the page without the admin credential get 401,
    and the dead letter stays."""
    async with mail.queue:
        mail.broken = True
        async with running_worker(mail.queue, WORKER) as worker:
            await mail.queue.enqueue(mail.send, "x@example.com", "pw")
            await wait_until(worker, lambda stats: stats.dead_lettered == 1)
        web = aqueue.dashboard.app(mail.queue, auth=":".join(ADMIN))
        async with serving(web) as url:
            page = await chromium.new_page()  # no credentials
            await page.goto(f"{url}/queues/emails/dead-letters")
            statuses = await page.evaluate(
                """async () => {
                    const csrf = document.querySelector("input[name=csrf]").value;
                    const post = (path, body) => fetch(path, {method: "POST",
                        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                        body: JSON.stringify(body)}).then((answer) => answer.status);
                    return [await post("/api/queues/emails/replay", {all: true}),
                            await post("/api/queues/emails/purge", {confirm: "emails"})];
                }"""
            )
            assert statuses == [401, 401]
            assert await mail.queue.dead_letters("emails").count() == 1


async def test_purge_asks_for_the_queue_name_first(mail: Mail, chromium: Browser) -> None:
    """Purge is a second page: a wrong name is refused and purges nothing; the right one does."""
    async with mail.queue:
        mail.broken = True
        async with running_worker(mail.queue, WORKER) as worker:
            for to in ("a@example.com", "b@example.com"):
                await mail.queue.enqueue(mail.send, to, "pw")
            await wait_until(worker, lambda stats: stats.dead_lettered == 2)
        web = aqueue.dashboard.app(mail.queue, auth=":".join(ADMIN))
        async with serving(web) as url:
            context = await chromium.new_context(
                http_credentials={"username": ADMIN[0], "password": ADMIN[1]}
            )
            page = await context.new_page()
            await page.goto(f"{url}/queues/emails/dead-letters")
            await page.get_by_role("link", name="Purge…").click()
            await page.get_by_label("queue name").fill("email")  # not quite
            await page.get_by_role("button", name="Purge").click()
            await expect(page.locator("body")).to_contain_text("confirm the purge")
            assert await mail.queue.dead_letters("emails").count() == 2
            await page.go_back()
            await page.get_by_label("queue name").fill("emails")
            await page.get_by_role("button", name="Purge").click()
            await expect(page.locator("table.dead-letters")).to_contain_text("no dead letters")
            assert await mail.queue.dead_letters("emails").count() == 0


async def test_the_job_screen_shows_every_attempt_the_arguments_and_the_result(
    flaky: Flaky, chromium: Browser, shots: Path
) -> None:
    """A job that failed twice, then succeeded, looked up by id from the Jobs screen: three
    attempts (two with their error and a traceback that opens), its arguments with the
    <script> as text and the password redacted, the result and the timings."""
    script = "<script>window.__xss = 1</script>"
    async with flaky.queue:
        job = await flaky.queue.enqueue(flaky.sign_up, script, SECRET)
        async with running_worker(flaky.queue, WORKER):
            await job.result(timeout=30)
        web = aqueue.dashboard.app(flaky.queue, refresh=0.3)
        async with serving(web) as url:
            page = await chromium.new_page()
            await page.goto(url + "/jobs")
            await page.get_by_placeholder("job id").fill(job.job_id)
            await page.get_by_role("button", name="Look up").click()
            await expect(page.locator("td.status")).to_have_text("succeeded", timeout=WAIT_MS)
            rows = page.locator("table.attempts tbody tr")
            await expect(rows).to_have_count(3)
            await expect(rows.nth(0).locator("td.outcome")).to_have_text("failed")
            await expect(rows.nth(1)).to_contain_text("mail server <b>down</b> (run 2)")
            await expect(rows.nth(2).locator("td.outcome")).to_have_text("succeeded")
            traceback = rows.nth(0).locator("pre.traceback")
            await expect(traceback).to_be_hidden()  # folded until asked for
            await rows.nth(0).locator("summary").click()
            await expect(traceback).to_contain_text("raise ValueError")
            arguments = page.locator("pre.arguments")
            await expect(arguments).to_contain_text(script)
            await expect(arguments).to_contain_text("[redacted]")
            await expect(page.locator("pre.result")).to_contain_text("welcome")
            await expect(page.locator("td.finished")).to_contain_text("UTC")
            assert SECRET not in await page.content()
            assert await page.evaluate("window.__xss") is None  # never ran
            await shoot(page, shots, "job-attempts")


async def test_the_workers_screen_shows_the_autoscalers_decisions(
    amqp_url: str, prefix: str, chromium: Browser, shots: Path
) -> None:
    """Under a backlog of 50 ms jobs, an autoscaled worker grows; the Workers screen lists
    that growth (time, from -> to, reason) without a reload."""
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-autoscaled", telemetry=False)

    @queue.task(queue="naps", name="nap")
    async def nap() -> None:
        await anyio.sleep(0.05)

    settings = WorkerSettings(
        autoscale=Autoscale(1, 20, target_wait=0.2, interval=0.5),
        heartbeat_interval=0.2,
        ready_interval=0.2,
        grace=5,
    )
    try:
        async with queue:
            await queue.enqueue_many(nap, [() for _ in range(400)])
            web = aqueue.dashboard.app(queue, refresh=0.3)
            async with serving(web) as url, running_worker(queue, settings):
                page = await chromium.new_page()
                await page.goto(url + "/workers")
                growth = page.locator('td.decisions ul[data-queue="naps"] li.grow').first
                await expect(growth).to_contain_text(
                    re.compile(r"naps: grow \d+ → \d+: \S"), timeout=WAIT_MS
                )
                await expect(growth.locator("time")).to_contain_text("UTC")
                await shoot(page, shots, "workers-autoscale")
    finally:
        await delete_topology(amqp_url, prefix, ["naps"])
