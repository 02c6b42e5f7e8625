"""How an attempt ended, and that ending as text for the wire and the result backend.

Every string here is made with `aqueue._core.errors`, which never raises: a task's exception
is user data, and settling a job must not depend on its ``__str__``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aqueue._core.errors import MESSAGE_CHARS, error_message, qualified_name, traceback_tail
from aqueue._core.wire import Cause, Failure
from aqueue._results import RemoteError


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt failed.

    Attributes:
        reason: ``failed``, ``timeout``, ``decode-error``, ``unknown-task``,
            ``undecodable-properties``, ``expired`` or ``cancelled``.
        error: the exception.
    """

    reason: str
    error: BaseException

    @property
    def type_name(self) -> str:
        """The qualified name of the exception's type."""
        return qualified_name(type(self.error))

    @property
    def message(self) -> str:
        """The exception's message (a placeholder if it cannot be made)."""
        return error_message(self.error)

    def failure(self, attempt: int, at_ms: int) -> Failure:
        """The history entry for this outcome."""
        return Failure(attempt, self.type_name, self.message, at_ms)

    def cause(self) -> Cause:
        """Why the job is dead-lettered, for its dead-letter headers."""
        return Cause(
            self.reason,
            self.type_name,
            error_message(self.error, MESSAGE_CHARS),
            traceback_tail(self.error),
        )

    def remote_error(self) -> RemoteError:
        """The text form of the failure, as kept in the result backend."""
        return RemoteError(self.type_name, self.message, traceback_tail(self.error))
