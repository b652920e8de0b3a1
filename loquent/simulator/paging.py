"""Twilio's list paging: ``PageSize``, ``Page`` and an opaque ``PageToken``.

Tokens name the last (``PA``) or first (``PB``) item of the neighbouring page, so following
``next_page_uri`` stays consistent while new items are added at the head of the list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlencode

from loquent.simulator.errors import bad_request

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    page: int
    page_size: int
    page_token: str | None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    request: PageRequest
    start: int
    has_next: bool
    has_previous: bool


def parse_page_request(query: Mapping[str, str], max_page_size: int = MAX_PAGE_SIZE) -> PageRequest:
    try:
        page_size = int(query.get("PageSize", DEFAULT_PAGE_SIZE))
        page = int(query.get("Page", 0))
    except ValueError:
        raise bad_request(20001, "PageSize and Page must be integers") from None
    if page_size < 1 or page < 0:
        raise bad_request(20001, "PageSize must be positive and Page not negative")
    return PageRequest(
        page=page,
        page_size=min(page_size, max_page_size, MAX_PAGE_SIZE),
        page_token=query.get("PageToken"),
    )


def paginate(items: Sequence[T], request: PageRequest, sid_of: Callable[[T], str]) -> Page[T]:
    size = request.page_size
    start = request.page * size
    token = request.page_token
    if token and len(token) > 2:
        sids = [sid_of(item) for item in items]
        anchor = token[2:]
        if anchor in sids:
            index = sids.index(anchor)
            start = index + 1 if token.startswith("PA") else max(0, index - size)
    chunk = list(items[start : start + size])
    return Page(
        items=chunk,
        request=request,
        start=start,
        has_next=start + size < len(items),
        has_previous=start > 0,
    )


def page_links(
    path: str,
    filters: Sequence[tuple[str, str]],
    page: Page[T],
    sid_of: Callable[[T], str],
) -> dict[str, str | None]:
    """First/next/previous/current URIs, carrying the list's filters along."""
    size = page.request.page_size

    def uri(page_number: int, token: str | None) -> str:
        params = [*filters, ("PageSize", str(size)), ("Page", str(page_number))]
        if token:
            params.append(("PageToken", token))
        return f"{path}?{urlencode(params)}"

    number = page.request.page
    next_uri = None
    previous_uri = None
    if page.has_next and page.items:
        next_uri = uri(number + 1, "PA" + sid_of(page.items[-1]))
    if page.has_previous and page.items:
        previous_uri = uri(max(number - 1, 0), "PB" + sid_of(page.items[0]))
    return {
        "first_page_uri": uri(0, None),
        "next_page_uri": next_uri,
        "previous_page_uri": previous_uri,
        "uri": uri(number, page.request.page_token),
    }
