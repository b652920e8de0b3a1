"""Fault rules: make matching Twilio API requests fail or slow down, a set number of times.

A rule can also attach a ``Set-Cookie`` header to its answers (``set_cookie``): a real
load balancer in front of an API may set session-affinity cookies, and a client shared between
customers must never carry one customer's cookie on another customer's request."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from loquent.simulator.errors import TwilioError, for_status


def format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


@dataclass
class FaultRule:
    id: int
    path_regex: str
    method: str | None = None  # None matches every method
    status: int | None = None  # None only delays, then answers normally
    count: int | None = None  # how many matching requests to fault; None means every one
    retry_after: float | None = None
    delay_ms: int | None = None
    set_cookie: str | None = None  # a Set-Cookie header value added to the answer
    after: int = 0  # matching requests let through before the rule starts to apply
    hits: int = 0
    passed: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path_regex)
        if self.method:
            self.method = self.method.upper()

    @property
    def remaining(self) -> int | None:
        return None if self.count is None else max(self.count - self.hits, 0)

    def matches(self, method: str, path: str) -> bool:
        if self.remaining == 0:
            return False
        if self.method and self.method != method.upper():
            return False
        return self._pattern.search(path) is not None

    def error(self, path: str) -> TwilioError | None:
        if self.status is None:
            return None
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = format_retry_after(self.retry_after)
        return for_status(self.status, path, headers)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path_regex": self.path_regex,
            "status": self.status,
            "count": self.count,
            "retry_after": self.retry_after,
            "delay_ms": self.delay_ms,
            "set_cookie": self.set_cookie,
            "after": self.after,
            "passed": self.passed,
            "hits": self.hits,
            "remaining": self.remaining,
        }


class FaultBook:
    """Rules in the order they were added; the first live matching rule applies."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(
        self,
        *,
        path_regex: str,
        method: str | None = None,
        status: int | None = None,
        count: int | None = None,
        retry_after: float | None = None,
        delay_ms: int | None = None,
        set_cookie: str | None = None,
        after: int = 0,
    ) -> FaultRule:
        rule = FaultRule(
            id=next(self._ids),
            path_regex=path_regex,
            method=method,
            status=status,
            count=count,
            retry_after=retry_after,
            delay_ms=delay_ms,
            set_cookie=set_cookie,
            after=after,
        )
        self._rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that applies to this request, if any, counting the hit."""
        for rule in self._rules:
            if rule.matches(method, path):
                if rule.passed < rule.after:
                    rule.passed += 1
                    continue
                rule.hits += 1
                return rule
        return None

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [rule for rule in self._rules if rule.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> None:
        self._rules.clear()
