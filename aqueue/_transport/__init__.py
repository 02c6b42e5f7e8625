"""The seam between aqueue and a broker: one interface, an AMQP and an in-memory implementation."""

from aqueue._transport.base import Consumer, Delivery, OutgoingMessage, Transport

__all__ = ["Consumer", "Delivery", "OutgoingMessage", "Transport"]
