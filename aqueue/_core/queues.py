"""What one logical queue needs on the broker: its work queue, dead-letter queue and bindings.

Pure data (the transport declares it). Why each argument is there is on the topology page.
"""

from __future__ import annotations

from aqueue._core.config import QueueSettings
from aqueue._core.delays import DELAY_LEVELS, delayed_delivery_binding
from aqueue._core.flow import FAIR_SHARDS, fair_destination, fair_queue
from aqueue._core.topology import (
    ArgumentValue,
    BindingSpec,
    ExchangeSpec,
    QueueSpec,
    Topology,
    TopologyNames,
    validate_name,
)
from aqueue.exceptions import ConfigurationError

#: Deliveries a dead letter may have before a quorum queue would drop it. Reading a
#: dead-letter queue (list, find) takes messages and gives them back, and every give-back
#: counts; RabbitMQ 4.x defaults quorum queues to a limit of 20, and with no dead-letter
#: exchange the broker would then drop the message. Set explicitly, far out of reach.
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000_000


def work_queue_arguments(
    names: TopologyNames, queue: str, settings: QueueSettings
) -> dict[str, ArgumentValue]:
    """The `x-` arguments of a work queue."""
    arguments: dict[str, ArgumentValue] = {
        "x-queue-type": settings.queue_type,
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-dead-letter-routing-key": queue,
    }
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = settings.delivery_limit
        # at-least-once dead-lettering only holds with reject-publish; with the default
        # drop-head RabbitMQ silently falls back to at-most-once.
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


def dead_letter_queue_arguments(settings: QueueSettings) -> dict[str, ArgumentValue]:
    """The `x-` arguments of a dead-letter queue."""
    arguments: dict[str, ArgumentValue] = {"x-queue-type": settings.queue_type}
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = DEAD_LETTER_DELIVERY_LIMIT
    return arguments


def queue_topology(names: TopologyNames, queue: str, settings: QueueSettings) -> Topology:
    """Everything one logical queue needs: exchanges, work queue, dead-letter queue, bindings."""
    validate_name(queue)
    work = names.work_queue(queue)
    dead = names.dead_letter_queue(queue)
    if len(dead.encode()) > 255:  # AMQP short strings
        raise ConfigurationError(f"queue name {dead!r} (prefix + queue) is over 255 bytes")
    return Topology(
        exchanges=(
            ExchangeSpec(names.exchange, "direct"),
            ExchangeSpec(names.dead_letter_exchange, "direct"),
            ExchangeSpec(names.delay_delivery_exchange, "topic"),
        ),
        queues=(
            QueueSpec(work, work_queue_arguments(names, queue, settings)),
            # Jobs that came back unacked wait here to run alone (see the guarantees page):
            # dead-lettered like the work queue, with the same delivery limit as a backstop.
            QueueSpec(names.quarantine_queue(queue), work_queue_arguments(names, queue, settings)),
            # The dead-letter queue has no dead-letter exchange of its own: nothing leaves it
            # except through replay (publish confirmed, then ack).
            QueueSpec(dead, dead_letter_queue_arguments(settings)),
        ),
        bindings=(
            BindingSpec(work, names.exchange, queue),
            BindingSpec(dead, names.dead_letter_exchange, queue),
            # bound before any delayed publish: a delayed message for an unbound destination
            # would wait in the last delay level (see the RabbitMQ-behaviour page)
            delayed_delivery_binding(names, queue),
        ),
    )


def deferred_destination(queue: str) -> str:
    """What the delay levels spell after the bits to bring a deferred job back."""
    return f"{queue}.deferred"


def deferred_topology(names: TopologyNames, queue: str, settings: QueueSettings) -> Topology:
    """The queue deferred jobs of `queue` come back to (see the flow-control page).

    Beside the work queue, consumed by the same workers into the same runners, so a job
    whose reserved start has come does not wait behind a flood of jobs not yet looked at.
    Dead-lettered like the work queue, into the logical queue's dead-letter queue.
    """
    deferred = names.deferred_queue(queue)
    destination = deferred_destination(queue)
    return Topology(
        exchanges=(
            ExchangeSpec(names.exchange, "direct"),
            ExchangeSpec(names.dead_letter_exchange, "direct"),
            ExchangeSpec(names.delay_delivery_exchange, "topic"),
        ),
        queues=(QueueSpec(deferred, work_queue_arguments(names, queue, settings)),),
        bindings=(
            BindingSpec(deferred, names.exchange, destination),
            BindingSpec(deferred, names.delay_delivery_exchange, "*." * DELAY_LEVELS + destination),
        ),
    )


def fair_topology(names: TopologyNames, queue: str, settings: QueueSettings) -> Topology:
    """The fair-share shards of `queue`: `FAIR_SHARDS` sub-queues (see the flow-control page).

    Each shard is a work queue like the logical queue's own (quorum where it is quorum, the
    same dead-lettering into the logical queue's dead-letter queue and delivery limit), bound
    on the main exchange and on the delay delivery exchange under ``{queue}.fair.{n}``, so a
    delayed job of a tenant comes back to its shard.
    """
    queues = []
    bindings = []
    for shard in range(FAIR_SHARDS):
        name = fair_queue(names, queue, shard)
        destination = fair_destination(queue, shard)
        queues.append(QueueSpec(name, work_queue_arguments(names, queue, settings)))
        bindings.append(BindingSpec(name, names.exchange, destination))
        bindings.append(
            BindingSpec(name, names.delay_delivery_exchange, "*." * DELAY_LEVELS + destination)
        )
    return Topology(
        exchanges=(
            ExchangeSpec(names.exchange, "direct"),
            ExchangeSpec(names.dead_letter_exchange, "direct"),
            ExchangeSpec(names.delay_delivery_exchange, "topic"),
        ),
        queues=tuple(queues),
        bindings=tuple(bindings),
    )
