"""Flow control in Redis: unique jobs, GCRA rate limits and leased running slots, global.

Every operation is one Lua script, so it is atomic across every worker and producer, and
every time it reads is Redis's own (``TIME``), never a worker's: two workers whose clocks
disagree by seconds still space jobs exactly (the limit is correct under clock skew). The
scripts run through the `RedisResultBackend` (`script`), the only module that imports redis.

Keys, under the backend's prefix:

- ``unique:{key}``: the id of the job holding a unique key, expiring after ``unique_for``;
- ``rate:{task}|{value}``: the limiter's theoretical arrival time (GCRA), microseconds of
  Redis's clock, expiring once it is in the past;
- ``slots:{task}|{value}``: a sorted set of running slots, member = the run's token, score =
  when its lease expires (milliseconds of Redis's clock). Renewed while the job runs; a
  worker that dies stops renewing, and its slot is freed once the lease expires.

Why GCRA: it keeps one number per limiter (a sliding log keeps every start), is exact at any
rate (a fixed window lets twice the limit through across a window's edge), has a burst size
built in, and tells each job *when* it may start, so a job over the limit is deferred once,
for exactly that long, instead of asking again in a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aqueue._core.flow import Rate
from aqueue._results.flow import FlowStore, LimiterState

_Script = Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]


class _Backend(Protocol):
    """What the store uses of the `RedisResultBackend`."""

    def key(self, kind: str, name: str) -> str: ...
    def script(self, source: str) -> _Script: ...
    async def scan(self, pattern: str, *, limit: int = 1000) -> list[str]: ...


# KEYS[1] unique key; ARGV: job id, ttl ms. Returns the job id that holds the key.
_RESERVE_UNIQUE = """
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS[1] unique key; ARGV: job id. Frees it only if that job holds it.
_RELEASE_UNIQUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS[1] the limiter's TAT; ARGV: emission interval µs, burst. GCRA with every call
# reserving its start: returns the µs to wait (0: start now). Numbers are written with
# %.0f: Lua's tostring would print 1.7e+15 and lose the microseconds.
_TAKE_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local wait = tat - (burst - 1) * interval - now
if wait < 0 then
  wait = 0
end
local new_tat = tat + interval
local ttl = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl))
return string.format('%.0f', wait)
"""

# KEYS: limiter TATs. Returns µs reserved ahead of now for each (0 when idle).
_RATE_BACKLOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  local ahead = tat - now
  if ahead < 0 then
    ahead = 0
  end
  out[i] = string.format('%.0f', ahead)
end
return out
"""

# KEYS[1] slots zset; ARGV: owner, limit, ttl ms. Expired leases go first.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = string.format('%.0f', now + ttl)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or
    redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"""

# KEYS[1] slots zset; ARGV: owner, ttl ms. 0 if the slot was lost (expired, taken over).
_RENEW_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""

# KEYS[1] slots zset; ARGV: owner.
_RELEASE_SLOT = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: slot zsets. Returns the live slots of each.
_RUNNING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return out
"""


class RedisFlowStore(FlowStore):
    """Flow-control state in Redis, shared by every process using the backend."""

    shared = True

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend
        self._reserve_unique = backend.script(_RESERVE_UNIQUE)
        self._release_unique = backend.script(_RELEASE_UNIQUE)
        self._take_rate = backend.script(_TAKE_RATE)
        self._rate_backlog = backend.script(_RATE_BACKLOG)
        self._take_slot = backend.script(_TAKE_SLOT)
        self._renew_slot = backend.script(_RENEW_SLOT)
        self._release_slot = backend.script(_RELEASE_SLOT)
        self._running = backend.script(_RUNNING)

    async def reserve_unique(self, key: str, job_id: str, *, ttl: float) -> str:
        held = await self._reserve_unique([self._backend.key("unique", key)], [job_id, _ms(ttl)])
        return held.decode() if isinstance(held, bytes) else str(held)

    async def release_unique(self, key: str, job_id: str) -> None:
        await self._release_unique([self._backend.key("unique", key)], [job_id])

    async def take_rate(self, key: str, rate: Rate) -> float:
        interval_us = max(1, round(rate.interval * 1_000_000))
        wait = await self._take_rate([self._backend.key("rate", key)], [interval_us, rate.burst])
        return int(wait) / 1_000_000

    async def take_slot(self, key: str, owner: str, *, limit: int, ttl: float) -> bool:
        keys = [self._backend.key("slots", key)]
        return bool(await self._take_slot(keys, [owner, limit, _ms(ttl)]))

    async def renew_slot(self, key: str, owner: str, *, ttl: float) -> bool:
        return bool(await self._renew_slot([self._backend.key("slots", key)], [owner, _ms(ttl)]))

    async def release_slot(self, key: str, owner: str) -> None:
        await self._release_slot([self._backend.key("slots", key)], [owner])

    async def limiter_states(self, tasks: Sequence[str]) -> list[LimiterState]:
        states: list[LimiterState] = []
        for kind, script in (("rate", self._rate_backlog), ("slots", self._running)):
            prefix = self._backend.key(kind, "")
            keys = [
                key
                for task in tasks
                for pattern in (_glob(task), _glob(task) + "|*")
                for key in await self._backend.scan(prefix + pattern)
            ]
            keys = sorted(set(keys))
            if not keys:
                continue
            values = await script(keys, [])
            for key, value in zip(keys, values, strict=True):
                name = key[len(prefix) :]
                if kind == "rate":
                    states.append(LimiterState("rate", name, int(value) / 1_000_000))
                else:
                    states.append(LimiterState("concurrency", name, int(value)))
        return states


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _glob(text: str) -> str:
    """`text` with the glob characters of Redis's MATCH escaped."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
