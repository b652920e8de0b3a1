"""Loquent: a multi-tenant SMS inbox for organizations that bring their own Twilio account."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loquent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
