"""Tier 5, beside the worker: the scheduler, one leader at a time, elected through the broker."""
