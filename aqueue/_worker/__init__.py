"""Tier 5, the long-running loop: the worker, its intake and runners, and one delivery's path."""
