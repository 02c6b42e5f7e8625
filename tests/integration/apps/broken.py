"""An app module whose own code fails at import (as a missing setting would make it)."""

from __future__ import annotations

raise RuntimeError("AQUEUE_SETTINGS is not set")
