"""What a worker checks before it runs a job: is it a second copy of a job published twice?

A tick published twice (two leaders for a moment during a failover, or a publish retried
after a lost confirm) has one job id and two copy tokens (``aqueue-tick``); so has an outbox
row published again by a relay that died between the publish and the delete
(``aqueue-copy``). With a result backend, the worker claims the job id for its copy
(`ResultBackend.claim`, atomic): the first copy wins, and its redeliveries win again; any
other copy is acked without running. Without a backend there is nothing to ask: both copies
run (see the schedules and outbox pages).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aqueue._client.session import Session
from aqueue._core.wire import HEADER_COPY, HEADER_TICK

logger = logging.getLogger("aqueue.worker")


class Gates:
    """The checks a job passes before it runs.

    Args:
        session: the open queue's session (its job states).
    """

    def __init__(self, session: Session) -> None:
        self._states = session.states

    async def duplicate_tick(self, job_id: str, extra: Mapping[str, str]) -> bool:
        """Whether this delivery is another copy of a tick (or outbox row) a first copy claimed.

        Raises:
            TransportError: the result backend failed (the job is then requeued).
        """
        backend = self._states.backend
        if backend is None:
            return False
        for header, kind in ((HEADER_TICK, "tick"), (HEADER_COPY, "copy")):
            token = extra.get(header)
            if token is None:
                continue
            if await backend.claim(f"{kind}:{job_id}", token, ttl=self._states.ttl):
                return False
            logger.info("job %s: another copy of this job ran or runs; not running it", job_id)
            return True
        return False
