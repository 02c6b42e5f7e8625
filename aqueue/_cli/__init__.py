"""The ``aqueue`` command line (tier 7): the only place that configures logging and the OTel SDK."""

from aqueue._cli.app import main

__all__ = ["main"]
