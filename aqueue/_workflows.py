"""Workflows as data: signatures, chain, group, chord, and how they unfold.

A workflow is a tree. When it is enqueued every signature in it gets its job id at once
(derived from the root id and its path), so whichever worker later publishes a step, and
however often a redelivered step publishes it again, the step has the same id. The jobs that
run first carry, in the ``aqueue-workflow`` header, the *continuation*: what to start with
their result. A worker that finishes a step publishes the continuation (confirmed) before it
acks the step.

Groups inside a workflow wait at a *barrier* in the result backend: each member records its
result under its index (first value wins), and the member that completes the barrier carries
on with every result in order. Members completing it twice (redeliveries) publish the same
next job, with the same id and data, which the worker runs once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from aqueue._core.types import JSONScalar, JSONValue
from aqueue._core.wire import HEADER_WORKFLOW
from aqueue._serialization import dumps, loads
from aqueue.exceptions import ConfigurationError, DecodeError, EncodeError

#: The longest ``aqueue-workflow`` header a step may carry. AMQP sends a message's headers in
#: one frame, and RabbitMQ closes the whole connection on a frame over its ``frame_max``
#: (128 KiB by default): a longer header is refused before anything is published.
MAX_HEADER_BYTES = 96 * 1024


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call as data: ``task.s(*args, **kwargs)``.

    The result of the step before it is prepended to `args`, unless the signature is
    immutable (``task.si(...)``).
    """

    task: str
    queue: str
    args: tuple[JSONValue, ...] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)
    immutable: bool = False
    options: Mapping[str, JSONScalar] = field(default_factory=dict)
    links: tuple[Node, ...] = ()
    error_links: tuple[Node, ...] = ()
    job_id: str | None = None

    def link(self, *callbacks: Node) -> Signature:
        """Also start `callbacks` with this step's result when it succeeds (side branches)."""
        return replace(self, links=self.links + _nodes(callbacks))

    def link_error(self, *callbacks: Node) -> Signature:
        """Start `callbacks` with the error (a dict) if this step fails for good."""
        return replace(self, error_links=self.error_links + _nodes(callbacks))


@dataclass(frozen=True, slots=True)
class Chain:
    """Steps run one after the other, each given the result of the one before."""

    steps: tuple[Node, ...]
    error_links: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """Members run in parallel; their results, in order, are the group's result."""

    members: tuple[Node, ...]
    error_links: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Chord:
    """A group, then a callback given every member's result in order."""

    header: Group
    body: Node
    error_links: tuple[Node, ...] = ()


Node: TypeAlias = Signature | Chain | Group | Chord


def chain(*steps: Node, on_error: Node | None = None) -> Chain:
    """Run `steps` one after the other; each gets the previous result as first argument."""
    if not steps:
        raise ConfigurationError("chain() needs at least one step")
    return Chain(_nodes(steps), _nodes([on_error] if on_error else []))


def group(*members: Node | Iterable[Node], on_error: Node | None = None) -> Group:
    """Run `members` in parallel (``group(a.s(1), b.s(2))`` or ``group(gen)``)."""
    flat: list[Node] = []
    for member in members:
        flat.extend(_nodes([member]) if _is_node(member) else _nodes(member))  # type: ignore[arg-type]
    return Group(tuple(flat), _nodes([on_error] if on_error else []))


def chord(header: Group | Iterable[Node], body: Node, *, on_error: Node | None = None) -> Chord:
    """Run the `header` group, then `body` with the list of their results, in order.

    Raises:
        ConfigurationError: the header is empty (its callback would never run).
    """
    members = header if isinstance(header, Group) else group(*header)
    if not members.members:
        raise ConfigurationError("chord() needs at least one member in its header")
    return Chord(members, _nodes([body])[0], _nodes([on_error] if on_error else []))


def _is_node(value: object) -> bool:
    return isinstance(value, Signature | Chain | Group | Chord)


def _nodes(values: Iterable[object]) -> tuple[Node, ...]:
    nodes = tuple(values)
    for value in nodes:
        if not _is_node(value):
            raise ConfigurationError(
                f"workflows are made of task.s(...), chain, group and chord, not {value!r}"
            )
    return nodes  # type: ignore[return-value]


# -- ids --------------------------------------------------------------------------------------


def derived_id(root: str, path: str) -> str:
    """A stable job id for the step at `path` of the workflow `root`."""
    return hashlib.sha256(f"{root}/{path}".encode()).hexdigest()[:32]


def assign_ids(node: Node, root: str, path: str = "0") -> Node:
    """Give every signature of the tree its job id (idempotent: ids already set are kept).

    Raises:
        ConfigurationError: an empty group below the root (what follows it would never run).
    """
    if isinstance(node, Signature):
        return replace(
            node,
            job_id=node.job_id or derived_id(root, path),
            links=tuple(assign_ids(n, root, f"{path}.l{i}") for i, n in enumerate(node.links)),
            error_links=tuple(
                assign_ids(n, root, f"{path}.e{i}") for i, n in enumerate(node.error_links)
            ),
        )
    errors = tuple(assign_ids(n, root, f"{path}.e{i}") for i, n in enumerate(node.error_links))
    if isinstance(node, Chain):
        steps = tuple(assign_ids(n, root, f"{path}.{i}") for i, n in enumerate(node.steps))
        return Chain(steps, errors)
    if isinstance(node, Group):
        if not node.members and path != "0":
            raise ConfigurationError(
                "an empty group inside a workflow would never finish: give it members"
            )
        members = tuple(assign_ids(n, root, f"{path}.{i}") for i, n in enumerate(node.members))
        return Group(members, errors)
    header = assign_ids(node.header, root, f"{path}.h")
    assert isinstance(header, Group)  # noqa: S101 - assign_ids keeps the node type
    return Chord(header, assign_ids(node.body, root, f"{path}.b"), errors)


def final_ids(node: Node) -> list[str]:
    """The job ids whose results are the workflow's result (several for a group)."""
    if isinstance(node, Signature):
        return [node.job_id or ""]
    if isinstance(node, Chain):
        return final_ids(node.steps[-1])
    if isinstance(node, Group):
        return [job_id for member in node.members for job_id in final_ids(member)]
    return final_ids(node.body)


def first_id(node: Node) -> str:
    """The job id of the first signature of `node`: a name for the node within its workflow."""
    while not isinstance(node, Signature):
        if isinstance(node, Chain):
            node = node.steps[0]
        elif isinstance(node, Group):
            if not node.members:
                return ""
            node = node.members[0]
        else:
            node = node.header
    return node.job_id or ""


# -- the wire form ----------------------------------------------------------------------------


def node_to_json(node: Node) -> JSONValue:
    """The JSON form of a node (documented on the wire-format page)."""
    errors = [node_to_json(n) for n in node.error_links]
    if isinstance(node, Signature):
        return {
            "task": node.task,
            "queue": node.queue,
            "args": list(node.args),
            "kwargs": dict(node.kwargs),
            "immutable": node.immutable,
            "options": dict(node.options),
            "links": [node_to_json(n) for n in node.links],
            "errors": errors,
            "id": node.job_id,
        }
    if isinstance(node, Chain):
        return {"chain": [node_to_json(n) for n in node.steps], "errors": errors}
    if isinstance(node, Group):
        return {"group": [node_to_json(n) for n in node.members], "errors": errors}
    return {"chord": node_to_json(node.header), "body": node_to_json(node.body), "errors": errors}


def node_from_json(value: Any) -> Node:
    """Parse the JSON form of a node.

    Raises:
        DecodeError: not a workflow node.
    """
    try:
        errors = tuple(node_from_json(n) for n in value.get("errors", []))
        if "chain" in value:
            return Chain(tuple(node_from_json(n) for n in value["chain"]), errors)
        if "group" in value:
            return Group(tuple(node_from_json(n) for n in value["group"]), errors)
        if "chord" in value:
            header = node_from_json(value["chord"])
            if not isinstance(header, Group):
                raise DecodeError("a chord's header must be a group")
            return Chord(header, node_from_json(value["body"]), errors)
        return Signature(
            task=str(value["task"]),
            queue=str(value["queue"]),
            args=tuple(value.get("args", [])),
            kwargs=dict(value.get("kwargs", {})),
            immutable=bool(value.get("immutable", False)),
            options=dict(value.get("options", {})),
            links=tuple(node_from_json(n) for n in value.get("links", [])),
            error_links=errors,
            job_id=value.get("id"),
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise DecodeError(f"not a workflow node: {exc}") from exc


# -- continuations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Continue by starting a node with the result."""

    node: Node


@dataclass(frozen=True, slots=True)
class Join:
    """Continue by recording the result at a barrier; go on only when it is complete."""

    barrier: str
    index: int
    size: int


Continuation: TypeAlias = Start | Join


@dataclass(frozen=True, slots=True)
class WorkflowLinks:
    """What a job of a workflow carries: what follows it, and what to do if it fails.

    Attributes:
        root: the workflow's id (also its trace id).
        next: the continuation, first item first.
        fail: job ids whose state turns failed when this job fails for good (the handle the
            user awaits: the end of its chain, or its chord's callback).
        on_error: nodes started with the error when this job fails for good (once per
            workflow failure).
        links: side branches started with this job's result.
    """

    root: str
    next: tuple[Continuation, ...] = ()
    fail: tuple[str, ...] = ()
    on_error: tuple[Node, ...] = ()
    links: tuple[Node, ...] = ()

    def encode(self) -> str:
        """The header value: a JSON string.

        Raises:
            EncodeError: it is over `MAX_HEADER_BYTES` (the rest of the workflow is too big
                to travel with this step: a chain into a group of thousands of members).
        """
        data = dumps(
            {
                "root": self.root,
                "next": [_continuation_to_json(c) for c in self.next],
                "fail": list(self.fail),
                "on_error": [node_to_json(n) for n in self.on_error],
                "links": [node_to_json(n) for n in self.links],
            }
        )
        if len(data) > MAX_HEADER_BYTES:
            raise EncodeError(
                f"a workflow step would carry a {len(data):,}-byte {HEADER_WORKFLOW} header "
                f"(what follows it in the workflow), over the {MAX_HEADER_BYTES:,} bytes "
                "RabbitMQ takes in one frame: start big groups first (a chord), or enqueue "
                "them from a task"
            )
        return data.decode()

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> WorkflowLinks | None:
        """The links in a job's propagated headers, if it is a workflow step.

        Raises:
            DecodeError: the workflow header is malformed.
        """
        value = headers.get(HEADER_WORKFLOW)
        return None if value is None else cls.decode(value)

    @classmethod
    def decode(cls, value: str) -> WorkflowLinks:
        """Parse the header value.

        Raises:
            DecodeError: not a workflow header.
        """
        raw: Any = loads(value.encode())
        try:
            return cls(
                root=str(raw["root"]),
                next=tuple(_continuation_from_json(c) for c in raw.get("next", [])),
                fail=tuple(str(f) for f in raw.get("fail", [])),
                on_error=tuple(node_from_json(n) for n in raw.get("on_error", [])),
                links=tuple(node_from_json(n) for n in raw.get("links", [])),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"bad {HEADER_WORKFLOW} header: {exc}") from exc


def _continuation_to_json(item: Continuation) -> JSONValue:
    if isinstance(item, Start):
        return {"start": node_to_json(item.node)}
    return {"join": item.barrier, "index": item.index, "size": item.size}


def _continuation_from_json(value: Any) -> Continuation:
    if "start" in value:
        return Start(node_from_json(value["start"]))
    return Join(str(value["join"]), int(value["index"]), int(value["size"]))


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """A job a workflow step asks to publish."""

    job_id: str
    task: str
    queue: str
    args: tuple[JSONValue, ...]
    kwargs: Mapping[str, JSONValue]
    options: Mapping[str, JSONScalar]
    links: WorkflowLinks


@dataclass(slots=True)
class _Context:
    root: str
    fail: tuple[str, ...]
    on_error: tuple[Node, ...]


def needs_backend(node: Node) -> bool:
    """Whether running `node` needs a result backend (barriers, or run-once error paths)."""
    if node.error_links:
        return True
    if isinstance(node, Signature):
        return any(needs_backend(n) for n in node.links)
    if isinstance(node, Chain):
        return any(isinstance(s, Group | Chord) or needs_backend(s) for s in node.steps)
    if isinstance(node, Group):
        return any(needs_backend(m) for m in node.members)
    return True


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a node starts in a running workflow.

    Attributes:
        then: what follows the node, first item first.
        fail: handles that fail with it (see `WorkflowLinks.fail`).
        on_error: error callbacks of the enclosing workflow.
        result: the previous step's result, when `has_result`: prepended to the arguments of
            every mutable signature that starts now.
        has_result: whether there is a previous step (``None`` is a result too).
    """

    then: tuple[Continuation, ...] = ()
    fail: tuple[str, ...] = ()
    on_error: tuple[Node, ...] = ()
    result: JSONValue = None
    has_result: bool = False


def plan(node: Node, *, root: str, resume: Resume | None = None) -> list[PlannedJob]:
    """The jobs to publish to start `node` (ids already assigned), going on as `resume` says.

    Without `resume`: a workflow's first step, with no previous result.
    """
    resume = resume or Resume()
    context = _Context(root, resume.fail, resume.on_error)
    jobs: list[PlannedJob] = []
    _plan(node, resume.then, context, resume.result, resume.has_result, jobs)
    return jobs


def _plan(
    node: Node,
    then: tuple[Continuation, ...],
    context: _Context,
    result: JSONValue,
    has_result: bool,
    jobs: list[PlannedJob],
) -> None:
    context = _Context(context.root, context.fail, context.on_error + node.error_links)
    if isinstance(node, Signature):
        args = node.args if node.immutable or not has_result else (result, *node.args)
        links = WorkflowLinks(context.root, then, context.fail, context.on_error, node.links)
        jobs.append(
            PlannedJob(
                node.job_id or "", node.task, node.queue, args, node.kwargs, node.options, links
            )
        )
    elif isinstance(node, Chain):
        # a failing step fails the chain's handle (its last step), unless an enclosing
        # chord's handle is the one to fail
        if not context.fail:
            context = _Context(context.root, tuple(final_ids(node)), context.on_error)
        rest = tuple(Start(step) for step in node.steps[1:])
        _plan(node.steps[0], rest + then, context, result, has_result, jobs)
    elif isinstance(node, Group):
        if not then:
            for member in node.members:
                _plan(member, (), context, result, has_result, jobs)
            return
        barrier = derived_id(context.root, "barrier:" + ",".join(final_ids(node)))
        size = len(node.members)
        for index, member in enumerate(node.members):
            _plan(member, (Join(barrier, index, size), *then), context, result, has_result, jobs)
    else:
        handle = tuple(final_ids(node.body))
        inner = _Context(context.root, context.fail or handle, context.on_error)
        _plan(node.header, (Start(node.body), *then), inner, result, has_result, jobs)
