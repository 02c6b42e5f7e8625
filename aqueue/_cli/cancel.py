"""``aqueue cancel``: cancel a job, or a workflow by its root id."""

from __future__ import annotations

from typing import Annotated

import typer

from aqueue._cli.common import AppArgument, app, console, load_queue, run
from aqueue._client.queue import TaskQueue


@app.command()
def cancel(
    app_path: AppArgument,
    job_id: Annotated[str, typer.Argument(help="The job id (or a workflow's root id).")],
) -> None:
    """Cancel a job: queued or delayed, it never starts; running, it is stopped.

    Exits 0 once every worker was told (and, with a result backend, the cancellation is
    stored); 3 when the result backend knows the job finished already.
    """
    if not job_id.strip():
        raise typer.BadParameter("must not be empty", param_hint="JOB_ID")
    queue = load_queue(app_path)
    if not run(_cancel, queue, job_id):
        console.print(f"job {job_id} finished already: nothing to cancel")
        raise typer.Exit(3)
    console.print(f"job {job_id} cancelled")


async def _cancel(queue: TaskQueue, job_id: str) -> bool:
    async with queue:
        return await queue.cancel(job_id)
