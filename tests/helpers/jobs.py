"""Jobs made by hand, for what `enqueue` would not send: an unknown task, carried headers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from aqueue._client.session import Session
from aqueue._core.config import DEFAULT_QUEUE
from aqueue._core.wire import Envelope, OutgoingMessage


def job_envelope(
    task: str,
    *,
    queue: str = DEFAULT_QUEUE,
    job_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Envelope:
    """A new job of the task named `task`, without arguments, stamped now (as `enqueue` does)."""
    return Envelope(
        job_id=job_id or uuid.uuid4().hex,
        task=task,
        queue=queue,
        enqueued_at_ms=time.time_ns() // 1_000_000,
        extra_headers=dict(headers or {}),
    )


async def publish_job(
    session: Session,
    task: str,
    *,
    job_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> OutgoingMessage:
    """Publish (confirmed, through the instrumentation) a job of `task` made by hand."""
    message = session.producer.encode(job_envelope(task, job_id=job_id, headers=headers))
    await session.producer.publish(message)
    return message
