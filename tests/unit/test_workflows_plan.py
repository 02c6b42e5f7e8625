"""Workflows as data: ids, wire form and how a tree unfolds into jobs (pure)."""

from __future__ import annotations

import pytest

from aqueue._workflows import (
    Join,
    Resume,
    Signature,
    Start,
    WorkflowLinks,
    assign_ids,
    chain,
    chord,
    final_ids,
    group,
    node_from_json,
    node_to_json,
    plan,
)
from aqueue.exceptions import ConfigurationError


def sig(name: str, *args: int, immutable: bool = False) -> Signature:
    return Signature(task=name, queue="default", args=args, immutable=immutable)


def test_ids_are_assigned_once_and_stably() -> None:
    """The same tree and root give the same ids; ids already set are kept."""
    flow = chain(sig("a"), group(sig("b"), sig("c")), sig("d"))
    one = assign_ids(flow, "root")
    two = assign_ids(flow, "root")
    assert one == two
    assert assign_ids(one, "other") == one
    assert len(set(final_ids(assign_ids(group(sig("x"), sig("x"), sig("x")), "r")))) == 3


def test_wire_form_roundtrips() -> None:
    """Every node kind survives its JSON form."""
    flow = assign_ids(
        chain(
            sig("a", 1).link(sig("log")).link_error(sig("alert")),
            chord([sig("b"), chain(sig("c"), sig("d", immutable=True))], sig("sum")),
            on_error=sig("cleanup"),
        ),
        "root",
    )
    assert node_from_json(node_to_json(flow)) == flow


def test_chain_starts_with_its_first_step_carrying_the_rest() -> None:
    """A chain publishes only its first step; the others ride in its continuation."""
    flow = assign_ids(chain(sig("a", 1), sig("b"), sig("c")), "r")
    [job] = plan(flow, root="r")
    assert (job.task, job.args) == ("a", (1,))
    assert [type(c).__name__ for c in job.links.next] == ["Start", "Start"]
    assert isinstance(job.links.next[0], Start)
    assert job.links.next[0].node == flow.steps[1]  # type: ignore[union-attr]


def test_result_is_prepended_unless_immutable() -> None:
    """The previous result becomes the first argument of mutable signatures only."""
    [mutable] = plan(
        assign_ids(sig("b", 2), "r"), root="r", resume=Resume(result=10, has_result=True)
    )
    [fixed] = plan(
        assign_ids(sig("c", 2, immutable=True), "r"),
        root="r",
        resume=Resume(result=10, has_result=True),
    )
    assert mutable.args == (10, 2)
    assert fixed.args == (2,)


def test_group_followed_by_something_joins_a_barrier() -> None:
    """Members of a group with a continuation record their result at one shared barrier."""
    flow = assign_ids(chord([sig("a"), sig("b"), sig("c")], sig("total")), "r")
    jobs = plan(flow, root="r")
    assert [job.task for job in jobs] == ["a", "b", "c"]
    joins = [job.links.next[0] for job in jobs]
    assert all(isinstance(j, Join) for j in joins)
    assert {j.barrier for j in joins} == {joins[0].barrier}  # type: ignore[union-attr]
    assert [(j.index, j.size) for j in joins] == [(0, 3), (1, 3), (2, 3)]  # type: ignore[union-attr]
    # a member's failure fails the chord's handle: the callback's job id
    assert all(job.links.fail == tuple(final_ids(flow)) for job in jobs)


def test_top_level_group_needs_no_barrier() -> None:
    """A group with nothing after it is just its members, each its own handle."""
    jobs = plan(assign_ids(group(sig("a"), sig("b")), "r"), root="r")
    assert all(job.links.next == () for job in jobs)


def test_nested_chain_in_group_carries_the_join_to_its_last_step() -> None:
    """A chain inside a chord reports to the barrier only from its last step."""
    flow = assign_ids(chord([chain(sig("a"), sig("b")), sig("c")], sig("total")), "r")
    first, other = plan(flow, root="r")
    assert first.task == "a"
    assert isinstance(first.links.next[0], Start)
    assert isinstance(first.links.next[1], Join)
    assert isinstance(other.links.next[0], Join)


def test_links_header_roundtrips() -> None:
    """The workflow header is a JSON string that parses back to the same links."""
    flow = assign_ids(chord([sig("a"), sig("b")], sig("total"), on_error=sig("oops")), "r")
    job = plan(flow, root="r")[0]
    assert WorkflowLinks.decode(job.links.encode()) == job.links
    assert [n.task for n in job.links.on_error] == ["oops"]  # type: ignore[union-attr]


def test_bad_workflow_parts_are_refused() -> None:
    """Only signatures and workflow nodes can be put together."""
    with pytest.raises(ConfigurationError, match="workflows are made of"):
        chain(sig("a"), "b")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at least one"):
        chain()
