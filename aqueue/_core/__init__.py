"""Tiers 0 and 1: pure data and pure functions. No I/O, no clock, no randomness.

``types`` and ``checks`` (tier 0, with `aqueue.exceptions`); ``topology`` (names and the
declaration vocabulary), ``config`` (every setting and its default), ``retry`` (the retry
decision), ``delays`` (broker-side delays), ``queues`` (what a logical queue declares),
``errors`` (exceptions as text) and ``wire`` (the wire format and every message builder).
Time and randomness are passed in, so all of it is tested with plain values.
"""
