"""A Redis result backend (``redis.asyncio``): the only module that imports redis.

Keys, all under one prefix:

- ``{prefix}:job:{job_id}``: the job's state (JSON), expiring after the TTL;
- ``{prefix}:done:{job_id}``: a pub/sub channel that hears once, when the state turns final;
- ``{prefix}:barrier:{id}``: a hash of member index → value; ``{prefix}:barrier-by:{id}``: the
  index of the member that completed it;
- ``{prefix}:claim:{key}``: who claimed a run-once action (an error callback);
- ``{prefix}:lease:{job_id}``: the run holding a long job's lease (``held:OWNER`` or
  ``ended:OWNER``), expiring unless renewed;
- ``{prefix}:unique:…``, ``{prefix}:rate:…``, ``{prefix}:slots:…``: flow control (unique
  jobs, rate limiters, running slots), written by the scripts of `aqueue._results.redis_flow`
  through `script`.

Writes that must be atomic (an initial state never replaces another, a final state is never
replaced by a non-final one, first value wins in a barrier, one member completes it) are Lua
scripts, so a redelivered job racing its earlier copy cannot undo a result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from aqueue._core.types import JSONValue
from aqueue._results.base import JobState, Lease, ResultBackend
from aqueue._results.flow import FlowStore
from aqueue._results.redis_flow import RedisFlowStore
from aqueue._serialization import dumps, loads
from aqueue.exceptions import ConfigurationError, MissingDependency, TransportError

try:
    import redis.asyncio as redis
    from redis.exceptions import RedisError
except ImportError as exc:  # an optional dependency: say which extra installs it
    raise MissingDependency.for_extra("RedisResultBackend", "redis", exc) from exc

# KEYS[1] state key; ARGV: new state, ttl ms, kind (initial/active/final), channel, job id,
# new status
_SET_STATE = """
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[3] == 'initial' then
    if ARGV[6] == 'pending' or cjson.decode(current)['status'] ~= 'pending' then
      return 0
    end
  end
  if ARGV[3] == 'active' then
    local status = cjson.decode(current)['status']
    if status == 'succeeded' or status == 'failed' or status == 'dead' then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == 'final' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
"""

# KEYS[1] barrier hash, KEYS[2] who completed it; ARGV: index, value, size, ttl ms.
# HMGET is called in slices: Lua's unpack() refuses more than ~8,000 values.
_JOIN_BARRIER = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local size = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[1]) < size then
  return false
end
local by = redis.call('GET', KEYS[2])
if not by then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
  by = ARGV[1]
end
if by ~= ARGV[1] then
  return false
end
local values = {}
for first = 0, size - 1, 1000 do
  local fields = {}
  for i = first, math.min(first + 999, size - 1) do
    fields[#fields + 1] = tostring(i)
  end
  local slice = redis.call('HMGET', KEYS[1], unpack(fields))
  for i = 1, #fields do
    values[#values + 1] = slice[i]
  end
end
return values
"""

# KEYS[1] claim key; ARGV: owner, ttl ms
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  return 1
end
return 0
"""

# KEYS[1] lease key; ARGV: owner, ttl ms. A free key or one held by the owner is (re)taken.
_HOLD_LEASE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= 'held:' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], 'held:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease key; ARGV: owner, ttl ms. Only the owner's (or a free) lease is ended.
_END_LEASE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= 'held:' .. ARGV[1] and current ~= 'ended:' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], 'ended:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""


#: Seconds `wait_final` waits for a notification before it reads the state again anyway.
RECHECK = 5.0


class RedisResultBackend(ResultBackend):
    """Job states and chord barriers in Redis.

    Args:
        url: a ``redis://`` URL.
        prefix: the prefix of every key.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "aqueue") -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(f"not a Redis URL: {url!r}")
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._set_state: Any = None
        self._join_barrier: Any = None
        self._claim: Any = None
        self._hold_lease: Any = None
        self._end_lease: Any = None
        self._flow: RedisFlowStore | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        client = redis.Redis.from_url(self.url)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise TransportError(f"cannot reach Redis at {self.url}: {exc}") from exc
        self._client = client
        self._set_state = client.register_script(_SET_STATE)
        self._join_barrier = client.register_script(_JOIN_BARRIER)
        self._claim = client.register_script(_CLAIM)
        self._hold_lease = client.register_script(_HOLD_LEASE)
        self._end_lease = client.register_script(_END_LEASE)
        self._flow = RedisFlowStore(self)

    async def aclose(self) -> None:
        self._flow = None
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> redis.Redis:
        """The open client.

        Raises:
            ConfigurationError: the backend is not open.
        """
        if self._client is None:
            raise ConfigurationError("the result backend is not open")
        return self._client

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def key(self, kind: str, name: str) -> str:
        """The Redis key of `name` of a `kind` (``job``, ``rate``, ...), under the prefix."""
        return self._key(kind, name)

    def flow_store(self) -> FlowStore | None:
        return self._flow

    def script(self, source: str) -> Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]:
        """A Lua script, registered (run by its SHA), errors translated to `TransportError`.

        For `aqueue._results.redis_flow`, which keeps its scripts but imports no redis.
        """
        registered = self.client.register_script(source)

        async def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            return await self._call(registered(keys=list(keys), args=list(args)))

        return run

    async def scan(self, pattern: str, *, limit: int = 1000) -> list[str]:
        """Up to `limit` keys matching `pattern` (SCAN: never blocks Redis)."""
        found: list[str] = []
        try:
            async for key in self.client.scan_iter(match=pattern, count=500):
                found.append(key.decode() if isinstance(key, bytes) else str(key))
                if len(found) >= limit:
                    break
        except (RedisError, OSError) as exc:
            raise TransportError(f"Redis at {self.url} failed: {exc}") from exc
        return found

    async def set_state(self, state: JobState, *, ttl: float) -> None:
        await self._call(self._set_state(**self._state_call(state, ttl)))

    async def set_states(self, states: Sequence[JobState], *, ttl: float) -> None:
        if not states:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for state in states:
                await self._set_state(**self._state_call(state, ttl), client=pipe)
            await self._call(pipe.execute())

    def _state_call(self, state: JobState, ttl: float) -> dict[str, list[Any]]:
        keys = [self._key("job", state.job_id)]
        args = [
            state.encode(),
            _ms(ttl),
            state.status.kind,
            self._key("done", state.job_id),
            state.job_id,
            state.status.value,
        ]
        return {"keys": keys, "args": args}

    async def get_state(self, job_id: str) -> JobState | None:
        data = await self._call(self.client.get(self._key("job", job_id)))
        return None if data is None else JobState.decode(data)

    async def wait_final(self, job_id: str, *, timeout: float) -> JobState | None:
        # subscribe first, then read: a state that turns final in between is seen either way.
        # Pub/sub delivers at most once (a reconnect loses what was said meanwhile), so the
        # state is read again after every RECHECK seconds of silence too.
        async with self.client.pubsub() as pubsub:
            await self._call(pubsub.subscribe(self._key("done", job_id)))
            with anyio.move_on_after(timeout):
                while True:
                    state = await self.get_state(job_id)
                    if state is not None and state.status.is_final:
                        return state
                    await self._call(
                        pubsub.get_message(ignore_subscribe_messages=True, timeout=RECHECK)
                    )
        return None

    async def join_barrier(
        self, barrier_id: str, index: int, size: int, value: JSONValue, *, ttl: float
    ) -> Sequence[JSONValue] | None:
        keys = [self._key("barrier", barrier_id), self._key("barrier-by", barrier_id)]
        raw = await self._call(
            self._join_barrier(keys=keys, args=[index, dumps(value), size, _ms(ttl)])
        )
        if raw is None:
            return None
        return [loads(item) for item in raw]

    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        keys = [self._key("claim", key)]
        return bool(await self._call(self._claim(keys=keys, args=[owner, _ms(ttl)])))

    async def hold_lease(self, key: str, owner: str, *, ttl: float) -> bool:
        keys = [self._key("lease", key)]
        return bool(await self._call(self._hold_lease(keys=keys, args=[owner, _ms(ttl)])))

    async def end_lease(self, key: str, owner: str, *, ttl: float) -> None:
        await self._call(self._end_lease(keys=[self._key("lease", key)], args=[owner, _ms(ttl)]))

    async def lease(self, key: str) -> Lease | None:
        raw = await self._call(self.client.get(self._key("lease", key)))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        state, _, owner = text.partition(":")
        return Lease(owner, ended=state == "ended")

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise TransportError(f"Redis at {self.url} failed: {exc}") from exc


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
