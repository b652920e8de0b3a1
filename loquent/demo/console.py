"""The demo talks to whoever started it on stdout, line by line, flushed at once."""

from __future__ import annotations


def say(text: str = "") -> None:
    print(text, flush=True)
