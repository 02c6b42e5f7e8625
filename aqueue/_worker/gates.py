"""What a worker checks before it runs a job: is it a second copy of a scheduled tick?

A tick published twice (two leaders for a moment during a failover, or a publish retried
after a lost confirm) has one job id and two copy tokens (``aqueue-tick``). With a result
backend, the worker claims the job id for its copy (`ResultBackend.claim`, atomic): the
first copy wins, and its redeliveries win again; any other copy is acked without running.
Without a backend there is nothing to ask: both copies run (see the schedules page).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aqueue._client.session import Session
from aqueue._core.wire import HEADER_TICK

logger = logging.getLogger("aqueue.worker")


class Gates:
    """The checks a job passes before it runs.

    Args:
        session: the open queue's session (its job states).
    """

    def __init__(self, session: Session) -> None:
        self._states = session.states

    async def duplicate_tick(self, job_id: str, extra: Mapping[str, str]) -> bool:
        """Whether this delivery is another copy of a tick that a first copy claimed.

        Raises:
            TransportError: the result backend failed (the job is then requeued).
        """
        token = extra.get(HEADER_TICK)
        backend = self._states.backend
        if token is None or backend is None:
            return False
        if await backend.claim(f"tick:{job_id}", token, ttl=self._states.ttl):
            return False
        logger.info("job %s: another copy of this tick ran or runs; not running it", job_id)
        return True
