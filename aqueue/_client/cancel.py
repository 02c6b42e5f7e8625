"""Cancelling a job: store it (with a result backend) and tell every worker (control exchange)."""

from __future__ import annotations

import logging

from aqueue._client.session import Session
from aqueue._core.cancels import CANCEL_ROUTING_KEY, CancelNotice
from aqueue._core.heartbeats import control_exchange
from aqueue._core.topology import ExchangeSpec, Topology
from aqueue._results import JobState, JobStatus
from aqueue._serialization import dumps

logger = logging.getLogger("aqueue")

#: Bound on writing the notice (it is not confirmed: see `Transport.notify`).
NOTICE_TIMEOUT = 5.0


async def cancel_job(session: Session, job_id: str) -> bool:
    """Cancel `job_id` (a job, or a workflow's root: every step not finished); see `cancel`.

    Returns:
        False when the result backend knows the job finished already (nothing to cancel);
        True otherwise (without a backend, always).

    Raises:
        ConnectionLost: the notice could not be written.
        TransportError: the result backend failed.
    """
    states = session.states
    if states.backend is not None:
        state = await states.backend.get_state(job_id)
        if state is not None and state.status.is_final:
            return False
        task = state.task if state is not None else None
        # final: no later write of "queued" or "running" can hide it (see `set_state`)
        await states.record(JobState(job_id, JobStatus.CANCELLED, task=task))
    exchange = control_exchange(session.names.prefix)
    await session.transport.declare(Topology(exchanges=(ExchangeSpec(exchange, "topic"),)))
    await session.transport.notify(
        exchange,
        CANCEL_ROUTING_KEY,
        dumps(CancelNotice(job_id).to_payload()),
        timeout=NOTICE_TIMEOUT,
    )
    logger.info("job %s cancelled", job_id)
    return True
