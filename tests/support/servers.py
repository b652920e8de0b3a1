"""Kept for the load drivers in bench/, which import ``free_port`` from here; tests use
``loquent.servers`` (the package's one runner) directly."""

from loquent.servers import free_port

__all__ = ["free_port"]
