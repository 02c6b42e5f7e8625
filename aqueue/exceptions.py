"""Every exception aqueue raises, in one tree.

```text
AqueueError
├── ConfigurationError          bad options at decoration, bad settings, a missing result backend
│   ├── QueueNotFound           a queue the operation names does not exist on the broker
│   └── MissingDependency       an optional dependency is not installed (names the extra)
├── EncodeError                 arguments that are not JSON, or a message over the size limit
├── DecodeError                 a message body or header that cannot be read (worker side)
├── UnknownTaskError            a message names a task this process does not know
├── JobCrashed                  a job's deliveries came back unacked too often (dead-lettered)
├── JobInterrupted              a job's worker stopped before it finished (history, dead letter)
├── JobExpired                  a job was delivered after its deadline (``expires``): not run
├── JobCancelled                a job was cancelled (``job.cancel()``): not run, or stopped
├── TransportError              anything between aqueue and the broker
│   ├── ConnectionFailed        the broker could not be reached, or refused the login, vhost or TLS
│   ├── ConnectionLost          the connection or channel dropped under an operation
│   └── PublishError            the broker did not take a message
│       ├── PublishNacked       the broker answered basic.nack (queue full with reject-publish, ...)
│       ├── Unroutable          no queue is bound for the routing key (mandatory publish returned)
│       └── PublishTimeout      no confirm arrived in time (the message may or may not be stored)
│           └── BrokerBlocked   a resource alarm (connection.blocked) held it past the timeout
├── JobFailed                   the awaited job failed for good; carries the remote error
└── ResultTimeout               no result within the timeout (the job may still finish)
```

Catch `AqueueError` for everything, `TransportError` for "the broker did not do it", and
`PublishError` for "this message is not known to be stored".

Control-flow signals raised *inside* tasks are not errors and do not derive from
`AqueueError`: `Retry` asks the worker to run the job again later.
"""

from __future__ import annotations

import datetime as dt
import math

__all__ = [
    "AqueueError",
    "BrokerBlocked",
    "ConfigurationError",
    "ConnectionFailed",
    "ConnectionLost",
    "DecodeError",
    "EncodeError",
    "JobCancelled",
    "JobCrashed",
    "JobExpired",
    "JobFailed",
    "JobInterrupted",
    "MissingDependency",
    "PublishError",
    "PublishNacked",
    "PublishTimeout",
    "QueueNotFound",
    "ResultTimeout",
    "Retry",
    "TransportError",
    "UnknownTaskError",
    "Unroutable",
]


class AqueueError(Exception):
    """The root of every exception aqueue raises."""


class ConfigurationError(AqueueError, ValueError):
    """A setting or option is wrong; raised where it is given (decoration, construction)."""


class QueueNotFound(ConfigurationError):
    """A queue an operation names does not exist on the broker (AMQP 404).

    A `ConfigurationError`, since it is nearly always a wrong queue name or prefix.
    """


class MissingDependency(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra that has it.

    Also an `ImportError`, which is what it replaces (``No module named 'redis'``).
    """

    @classmethod
    def for_extra(cls, what: str, extra: str, error: ImportError) -> MissingDependency:
        """``{what} needs the {extra} extra: pip install "aqueue-rabbitmq[{extra}]" (...)``."""
        return cls(
            f"{what} needs the optional dependencies of aqueue-rabbitmq[{extra}]: "
            f'pip install "aqueue-rabbitmq[{extra}]" ({error})'
        )


class EncodeError(AqueueError, TypeError):
    """A job could not be encoded: a non-JSON argument, or a message over the size limit."""


class DecodeError(AqueueError, ValueError):
    """A message could not be decoded into a job."""


class UnknownTaskError(AqueueError, LookupError):
    """A message names a task that is not registered in this process."""


class JobCrashed(AqueueError):
    """A job came back unacked too many times, and is dead-lettered with reason ``crashed``.

    Each time, the worker holding it died or lost its connection.
    """


class JobInterrupted(AqueueError):
    """A job's worker stopped before the job finished (the stop's grace period ran out).

    The job goes back to its queue as its next attempt, this interruption in its history;
    after more than the worker's ``crash_limit`` interruptions it is dead-lettered with reason
    ``interrupted``, so a job that outlasts every grace period does not go round for ever.
    """


class JobExpired(AqueueError):
    """A job was delivered after its ``expires`` deadline, so it was not run.

    It is dead-lettered with reason ``expired`` (or dropped, with ``on_expire="drop"``).
    Also why a retry that would be due after the deadline is not sent.
    """


class JobCancelled(AqueueError):
    """A job was cancelled: it never started, or its run was stopped; it is not retried."""


class TransportError(AqueueError):
    """The broker or the connection to it failed an operation."""


class ConnectionFailed(TransportError):
    """No broker answered before the connect deadline, or every one refused for good.

    A refusal that every retry would meet again is raised at once, not at the deadline: a
    wrong user name or password, a vhost that does not exist (or that the user may not use),
    a TLS handshake that fails (a certificate that does not verify, a host name it is not
    for); so is a port that refused connections for a second (nothing listens there). The
    message names the cause and what to check, in one line.
    """


class ConnectionLost(TransportError):
    """The connection or channel was lost while an operation was under way."""


class PublishError(TransportError):
    """The broker did not confirm a message as stored."""


class PublishNacked(PublishError):
    """The broker answered every attempt with `basic.nack`: the message is probably not stored.

    Probably: the publish was retried until its deadline, and an earlier copy, nacked or
    unconfirmed, may have been stored after all.
    """


class Unroutable(PublishError):
    """The mandatory publish came back: no queue is bound for its routing key."""


class PublishTimeout(PublishError):
    """No confirm arrived before the timeout.

    The message may still have been stored: a publish retried after this keeps its job id,
    so a duplicate can be recognised.
    """


class BrokerBlocked(PublishTimeout):
    """The broker blocked the publishing connection (memory or disk alarm) past the timeout."""


class JobFailed(AqueueError):
    """The job (or a workflow step it waited on) failed for good.

    Attributes:
        job_id: the job that failed.
        remote_type: the exception type raised in the worker, ``module.Name``.
        remote_message: its message.
        remote_traceback: the worker-side traceback (its tail).
    """

    def __init__(
        self, job_id: str, remote_type: str, remote_message: str, remote_traceback: str = ""
    ) -> None:
        super().__init__(f"job {job_id} failed: {remote_type}: {remote_message}")
        self.job_id = job_id
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class ResultTimeout(AqueueError, TimeoutError):
    """No final state arrived before the timeout; the job may still finish later."""


class Retry(Exception):
    """Raised inside a task: run this job again after `delay` (or the task's backoff).

    It counts as an attempt: when the task's ``retries`` are used up (three, if the task sets
    none), the job goes to the dead-letter queue like any other failure. The delay lives in
    the broker, never in the worker; one longer than the longest delay (about 31 days) is
    cut to it.

    Args:
        delay: seconds or a timedelta; ``None`` uses the task's backoff.
        reason: a note kept in the job's history.
    """

    def __init__(self, delay: float | dt.timedelta | None = None, reason: str = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
        given: object = seconds  # run-time input: not every caller runs mypy
        if given is not None and not (
            isinstance(given, int | float) and math.isfinite(given) and given >= 0
        ):
            raise ConfigurationError(f"Retry delay must be a finite number >= 0, not {delay!r}")
        super().__init__(reason or "retry requested")
        self.delay: float | None = seconds
