"""What the commands print for scripts (``--json``) and for people (tables that keep ids whole).

JSON goes to stdout as one document (stdlib ``json``: the documents are small, and orjson
stays in the serialization module); messages go to stderr, so ``aqueue dlq list Q --json | jq``
reads JSON only. Every document carries ``version`` (`JSON_VERSION`): fields are only ever
added within a version.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from aqueue._client.deadletters import DeadLetter
from aqueue._serialization import decode_arguments
from aqueue.exceptions import DecodeError

__all__ = ["JSON_VERSION", "dead_letter_json", "id_table", "print_json"]

#: The ``version`` of the ``--json`` documents of ``queues``, ``dlq list`` and ``dlq show``.
JSON_VERSION = 1


def print_json(document: dict[str, Any]) -> None:
    """`document` on stdout, as one line of JSON."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def dead_letter_json(letter: DeadLetter, *, full: bool) -> dict[str, Any]:
    """A dead letter as JSON; `full` adds its history, traceback and arguments (``show``)."""
    document: dict[str, Any] = {
        "job_id": letter.job_id,
        "task": letter.task,
        "queue": letter.queue,
        "reason": letter.reason,
        "source": letter.source,
        "attempts": letter.attempts,
        "exception_type": letter.exception_type,
        "exception_message": letter.exception_message,
        "enqueued_at": _when(letter.enqueued_at),
        "first_failed_at": _when(letter.first_failed_at),
        "last_failed_at": _when(letter.last_failed_at),
        "body_size": letter.body_size,
    }
    if full:
        document["history"] = [
            {
                "attempt": failure.attempt,
                "type": failure.type,
                "message": failure.message,
                "failed_at": _when(failure.failed_at),
            }
            for failure in letter.history
        ]
        document["traceback"] = letter.traceback
        try:
            args, kwargs = decode_arguments(letter.body)
        except DecodeError:
            document["args"] = document["kwargs"] = None  # not JSON arguments
        else:
            document["args"], document["kwargs"] = list(args), dict(kwargs)
    return document


def id_table(id_header: str, ids: Sequence[str], *headers: str) -> Table:
    """A table whose first column holds ids that are never cut: the other columns fold first.

    An id cut at the terminal's width could not be copied into the next command
    (``aqueue dlq show JOB_ID``).
    """
    table = Table(show_edge=False)
    table.add_column(id_header, no_wrap=True, min_width=max(map(len, ids), default=0))
    for header in headers:
        table.add_column(header, overflow="fold")
    return table
