"""The pure bottom tier: the retry decision, per-job overrides and exceptions as text."""

from __future__ import annotations

import pytest

from aqueue import Retry
from aqueue._core.config import TaskOptions
from aqueue._core.errors import error_message, qualified_name, traceback_tail
from aqueue._core.retry import RetryPolicy
from aqueue.exceptions import ConfigurationError


class TestNextDelay:
    """`RetryPolicy.next_delay` holds the whole retry rule."""

    policy = RetryPolicy(max_attempts=3, backoff=2.0, jitter=0.5, retry_on=(ValueError,))

    def test_a_listed_failure_is_retried_with_backoff_and_jitter(self) -> None:
        """Attempt n waits backoff * 2**(n-1), less the random share of the jitter."""
        assert self.policy.next_delay(ValueError(), 1, 0.0) == 2.0
        assert self.policy.next_delay(ValueError(), 2, 0.5) == 4.0 * 0.75

    def test_an_unlisted_failure_is_not_retried(self) -> None:
        """A failure outside `retry_on` goes to the dead-letter queue at once."""
        assert self.policy.next_delay(KeyError(), 1, 0.0) is None

    def test_no_retry_once_the_attempts_are_used_up(self) -> None:
        """The last attempt's failure is final, whatever it is."""
        assert self.policy.next_delay(ValueError(), 3, 0.0) is None
        assert self.policy.next_delay(Retry(delay=1), 3, 0.0) is None

    def test_retry_is_retried_whatever_retry_on_says_after_its_own_delay(self) -> None:
        """`raise Retry(delay=...)` asks for a retry: its delay wins over the backoff."""
        assert self.policy.next_delay(Retry(delay=7.5), 1, 0.0) == 7.5
        assert self.policy.next_delay(Retry(), 2, 0.0) == 4.0

    def test_a_huge_backoff_is_capped(self) -> None:
        """An exponent that overflows is capped at `max_backoff`, never an error."""
        policy = RetryPolicy(max_attempts=2000, backoff=1.0, max_backoff=60.0, jitter=0.0)
        assert policy.next_delay(ValueError(), 1500, 0.0) == 60.0


class TestOverrides:
    """Per-job options: what `with_options` sends and what the worker applies."""

    def test_overrides_name_only_the_per_job_options_changed(self) -> None:
        """The queue and unrelated options do not travel with each job."""
        options = TaskOptions(retries=4, timeout=2.0, queue="q")
        assert options.overrides({"retries": 4, "queue": "q"}) == {"retries": 4}

    def test_with_overrides_applies_known_options_and_ignores_unknown_ones(self) -> None:
        """A newer producer may send an option this worker does not know."""
        options = TaskOptions().with_overrides({"retries": 3, "newfangled": 1})
        assert options.retries == 3

    def test_with_overrides_without_changes_is_the_same_object(self) -> None:
        """The hot path: no per-job options, no copy."""
        options = TaskOptions()
        assert options.with_overrides({}) is options

    def test_a_bad_override_is_a_configuration_error(self) -> None:
        """A bad value is refused as it would be at decoration."""
        with pytest.raises(ConfigurationError):
            TaskOptions().with_overrides({"retries": -1})


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class TestErrorText:
    """Exceptions as text never raise: a task's exception is user data."""

    def test_an_exception_whose_str_raises_gets_a_placeholder(self) -> None:
        """The placeholder names the exception's type and what went wrong."""
        text = error_message(_Unprintable())
        assert "test_core._Unprintable" in text
        assert "RuntimeError" in text

    def test_the_message_is_cut_at_the_limit(self) -> None:
        """Long messages are truncated for headers."""
        assert error_message(ValueError("x" * 50), limit=10) == "x" * 10

    def test_a_traceback_of_an_unprintable_exception_is_still_text(self) -> None:
        """Formatting the traceback may call ``__str__``; the tail is text either way."""
        try:
            raise _Unprintable
        except _Unprintable as exc:
            tail = traceback_tail(exc)
        assert "_Unprintable" in tail

    def test_builtins_are_named_without_their_module(self) -> None:
        """``ValueError``, but ``module.Qualname`` for everything else."""
        assert qualified_name(ValueError) == "ValueError"
        assert qualified_name(_Unprintable) == "tests.unit.test_core._Unprintable"


def test_an_int_beyond_any_float_is_not_a_number() -> None:
    """``is_number(10**400)`` is False, not an OverflowError; big ints below the bound pass."""
    from aqueue._core.checks import is_number

    assert not is_number(10**400)
    assert not is_number(-(10**400), at_most=0)
    assert is_number(2**62)
    assert not is_number(2**62, at_most=1e9)


def test_no_backoff_stays_no_backoff_however_many_attempts() -> None:
    """backoff=0: every delay is 0, even once ``factor ** attempts`` overflows a float."""
    policy = RetryPolicy(max_attempts=10_001, backoff=0.0, factor=2.0, max_backoff=60.0)
    assert policy.next_delay(ValueError(), 10, 0.5) == 0.0
    assert policy.next_delay(ValueError(), 2000, 0.5) == 0.0  # 2.0 ** 1999 overflows
    growing = RetryPolicy(max_attempts=10_001, backoff=1.0, factor=2.0, max_backoff=60.0)
    assert growing.next_delay(ValueError(), 2000, 0.0) == 60.0
