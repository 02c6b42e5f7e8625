"""What a job's states keep for the job screen: redacted, bounded arguments, the attempts
with their tracebacks, the timings; and states written before them still decode."""

from __future__ import annotations

import json

import orjson

from aqueue import TaskQueue
from aqueue._dashboard.present import job_attempts, stored_arguments_text
from aqueue._results import JobState, JobStatus, MemoryResultBackend, RemoteError
from aqueue._results.base import (
    MAX_ATTEMPT_TRACEBACK_CHARS,
    MAX_ATTEMPTS_KEPT,
    FailedAttempt,
    merge_attempts,
)
from aqueue._results.states import Attempt, JobDetails, JobStates
from aqueue._serialization import encode_arguments
from aqueue._tasks.redact import MAX_STORED_ARGUMENTS, REDACTED, stored_arguments

queue = TaskQueue("memory://")


@queue.task(redact=("password",))
def sign_in(user: str, password: str, remember: bool = False) -> None: ...


@queue.task(redact=True)
def hidden(token: str) -> None: ...


@queue.task
def plain(text: str) -> None: ...


def test_a_state_written_before_the_details_still_decodes() -> None:
    """A stored state without arguments, history or timings reads with them empty."""
    old = orjson.dumps(
        {
            "job_id": "j1",
            "status": "succeeded",
            "task": "t",
            "attempt": 1,
            "result": 3,
            "error": None,
            "progress": None,
            "updated_at": 5.0,
            "extra": {},
        }
    )
    state = JobState.decode(old)
    assert (state.status, state.result) == (JobStatus.SUCCEEDED, 3)
    assert (state.arguments, state.history, state.enqueued_at, state.trace_id) == (
        None,
        (),
        None,
        None,
    )
    assert job_attempts(state)[0].outcome == "succeeded"


def test_the_details_round_trip_and_bad_history_entries_are_skipped() -> None:
    """Every new field survives encode/decode; a history entry of the wrong shape is dropped."""
    failure = FailedAttempt(1, "ValueError", "no", "Traceback...", 10.0)
    state = JobState(
        "j1",
        JobStatus.RETRYING,
        attempt=1,
        arguments='{"args":[1],"kwargs":{}}',
        history=(failure,),
        enqueued_at=9.0,
        started_at=9.5,
        trace_id="ab" * 16,
    )
    assert JobState.decode(state.encode()) == state
    raw = json.loads(state.encode())
    raw["history"].insert(0, {"attempt": "one"})
    assert JobState.decode(json.dumps(raw).encode()).history == (failure,)


def test_stored_arguments_are_redacted_before_they_are_stored() -> None:
    """By position and by keyword; ``redact=True`` hides the call; a task redacting nothing
    stores its body as sent."""
    text = stored_arguments(sign_in, ("ann", "s3cret"), {"remember": True})
    assert json.loads(text) == {"args": ["ann", REDACTED], "kwargs": {"remember": True}}
    text = stored_arguments(sign_in, ("ann",), {"password": "s3cret"})
    assert json.loads(text) == {"args": ["ann"], "kwargs": {"password": REDACTED}}
    assert "s3cret" not in stored_arguments(sign_in, ("a", "s3cret"), {}, b'{"args":["s3cret"]}')
    assert json.loads(stored_arguments(hidden, ("tok",), {})) == REDACTED
    body = encode_arguments(["hi"], {})
    assert stored_arguments(plain, ("hi",), {}, body) == body.decode()


def test_stored_arguments_are_cut_at_8_kib_with_a_marker() -> None:
    """20 KB of arguments keep 8 KiB, ending with the marker naming the full size; the
    dashboard shows cut text as it is."""
    big = "é" * 10_000
    text = stored_arguments(plain, (big,), {})
    assert len(text.encode()) <= MAX_STORED_ARGUMENTS
    assert text.endswith("bytes in all]")
    assert "truncated: 20025 bytes" in text
    assert stored_arguments_text(text) == text
    assert stored_arguments_text('{"args":[1]}') == '{\n  "args": [\n    1\n  ]\n}'


def test_attempts_merge_one_per_number_bounded_newest_kept() -> None:
    """The later source wins (the stored one, with its traceback, over the headers'); a long
    traceback keeps its tail; only the newest MAX_ATTEMPTS_KEPT stay."""
    from_headers = [FailedAttempt(n, "E", f"m{n}", "", float(n)) for n in range(1, 15)]
    stored = [FailedAttempt(3, "E", "m3", "x" * 10_000 + "END", 3.0)]
    merged = merge_attempts(from_headers, stored)
    assert [f.attempt for f in merged] == list(range(5, 15))
    assert len(merged) == MAX_ATTEMPTS_KEPT
    merged = merge_attempts(from_headers[:4], stored)
    assert merged[2].traceback.endswith("END")
    assert len(merged[2].traceback) == MAX_ATTEMPT_TRACEBACK_CHARS


async def test_a_retry_carries_the_earlier_tracebacks_into_every_later_state() -> None:
    """Attempt 1 records retrying with its error; attempt 2 (its headers' history has no
    traceback) reads it at `running`, so its final state lists attempt 1 with the traceback,
    and its own failure; the final state has its finish time."""
    states = JobStates(MemoryResultBackend(), ttl=60)
    first = Attempt("j", "t", 1, True, details=JobDetails('{"args":[]}', 1.0, 2.0))
    await states.retrying(first, RemoteError("ValueError", "one", "Traceback: line 1"))
    headers_history = (FailedAttempt(1, "ValueError", "one", "", 2.5),)
    second = Attempt(
        "j", "t", 2, True, details=JobDetails('{"args":[]}', 1.0, 3.0, headers_history)
    )
    await states.running(second)
    await states.failed(second, RemoteError("KeyError", "two", "Traceback: line 2"), dead=False)
    assert states.backend is not None
    state = await states.backend.get_state("j")
    assert state is not None
    assert [(f.attempt, f.type, f.traceback) for f in state.history] == [
        (1, "ValueError", "Traceback: line 1"),
        (2, "KeyError", "Traceback: line 2"),
    ]
    assert state.finished_at is not None
    assert (state.enqueued_at, state.started_at, state.arguments) == (1.0, 3.0, '{"args":[]}')
    assert [row.outcome for row in job_attempts(state)] == ["failed", "failed"]
