"""Tier 4, what an application holds: TaskQueue, its Session, producer, flows, dead letters."""
