"""MMS media: listed per message and relayed from Twilio (the simulator) with the org's
credentials, which never travel to the media host; scoped to the organization; unsafe types
are only ever downloads."""

from __future__ import annotations

import asyncio
import secrets
import tracemalloc
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import update

from loquent.messaging import media
from loquent.messaging.models import Message, MessageMedia
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.media import tiny_png
from tests import test_capture_flow
from tests.conftest import Stack
from tests.test_capture_flow import eventually, settled

LINE = "+14155550100"
CUSTOMER = "+14155550177"
MEDIA_PATH = r"/Media/ME[0-9a-f]{32}$"  # the content fetch, not the .json description

pytestmark = pytest.mark.timeout(60)

# The simulator with one connected account and a sink pointing at the app (worker running).
flow = test_capture_flow.flow


async def send_mms(stack: Stack, sim: Sim, *urls: str, body: str = "Look at this") -> Message:
    sent = await sim.console_sms(
        stack.org.account_sid,
        **{"from": LINE, "to": CUSTOMER, "body": body, "media_urls": list(urls)},
    )
    return await settled(stack, sent["sid"])


async def media_list(stack: Stack, message_id: int, **kw: Any) -> httpx.Response:
    return await stack.get(f"/api/messages/{message_id}/media", **kw)


async def first_media_url(stack: Stack, message_id: int) -> str:
    response = await media_list(stack, message_id)
    assert response.status_code == 200, response.text
    return str(response.json()["items"][0]["url"])


async def set_stored_type(message_id: int, stack: Stack, content_type: str) -> None:
    async with stack.db.session() as session:
        await session.execute(
            update(MessageMedia)
            .where(MessageMedia.message_id == message_id)
            .values(content_type=content_type)
        )
        await session.commit()


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


async def test_mms_media_is_listed_and_relayed(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    message = await send_mms(
        stack, sim, "https://example.com/a.png", "https://example.com/notes.txt"
    )
    assert (message.num_media, message.body_state, message.body) == (2, "ready", "Look at this")
    rows = await stack.rows(MessageMedia, MessageMedia.message_id == message.id)
    assert [row.content_type for row in rows] == ["image/png", "text/plain"]

    listed = await media_list(stack, message.id)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [(i["sid"], i["content_type"]) for i in items] == [
        (row.media_sid, row.content_type) for row in rows
    ]
    for item, row in zip(items, rows, strict=True):
        assert item["url"] == f"/api/messages/{message.id}/media/{row.media_sid}"

    image = await stack.get(items[0]["url"])
    assert image.status_code == 200
    assert image.content == tiny_png()
    assert image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == "private, max-age=3600"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert image.headers["content-disposition"].startswith("inline;")

    text = await stack.get(items[1]["url"])
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "Simulated media for https://example.com/notes.txt\n"


async def test_credentials_are_not_sent_to_the_media_host(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    assert stack.sim_url is not None
    port = urlsplit(stack.sim_url).port
    # The app calls the API on 127.0.0.1; the media redirect now points at another host name.
    await sim.call("PATCH", "/config", {"media_base_url": f"http://localhost:{port}"})
    message = await send_mms(stack, sim, "https://example.com/a.png")
    await sim.call("DELETE", "/media-fetches")

    response = await stack.get(await first_media_url(stack, message.id))
    assert response.status_code == 200
    assert response.content == tiny_png()

    fetches = await sim.call("GET", "/media-fetches")
    assert [(f["had_authorization"], f["status"]) for f in fetches] == [(False, 200)]
    # The API host itself was asked with the account's credentials.
    requests = await sim.call("GET", "/requests", path_contains="/Media/ME")
    content_requests = [r for r in requests if not r["path"].endswith(".json")]
    assert [r["auth_user"] for r in content_requests] == [stack.org.account_sid]


@pytest.mark.parametrize(
    ("stored", "served", "disposition"),
    [
        ("text/html", "text/html", "attachment"),
        ("image/svg+xml", "image/svg+xml", "attachment"),
        ("application/pdf", "application/pdf", "attachment"),
        ("application/x-unknown", "application/x-unknown", "attachment"),
        # Nothing usable stored: the media host's answer is used, under the same rule.
        ("", "image/png", "inline"),
        ("text/html\r\nSet-Cookie: a=b", "image/png", "inline"),
    ],
)
async def test_only_safe_types_are_shown_inline(
    flow: tuple[Stack, Sim], stored: str, served: str, disposition: str
) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/page.png")
    await set_stored_type(message.id, stack, stored)

    response = await stack.get(await first_media_url(stack, message.id))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == served
    assert response.headers["content-disposition"].split(";")[0] == disposition
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]
    assert "set-cookie" not in response.headers


async def test_media_of_another_organization_is_not_found(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/a.png")
    url = await first_media_url(stack, message.id)
    other = await stack.add_org("Globex", ["+14155550200"])

    listed = await media_list(stack, message.id, org=other)
    assert (listed.status_code, error_code(listed)) == (404, "not_found")
    content = await stack.get(url, org=other)
    assert (content.status_code, error_code(content)) == (404, "not_found")
    assert await sim.call("GET", "/media-fetches") == []  # Twilio was never asked

    async with httpx.AsyncClient(timeout=10) as anonymous:
        for path in (f"/api/messages/{message.id}/media", url):
            response = await anonymous.get(stack.url + path)
            assert (response.status_code, error_code(response)) == (401, "unauthorized")


async def test_bad_and_unknown_ids(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/a.png")
    unknown_me = "ME" + secrets.token_hex(16)
    cases = {
        "/api/messages/abc/media": (422, "invalid_request"),
        "/api/messages/0/media": (422, "invalid_request"),
        "/api/messages/99999999999999999999999/media": (422, "invalid_request"),
        f"/api/messages/{message.id}/media/not-a-sid": (422, "invalid_request"),
        f"/api/messages/{message.id}/media/ME{'z' * 32}": (422, "invalid_request"),
        f"/api/messages/{message.id + 1000}/media": (404, "not_found"),
        f"/api/messages/{message.id}/media/{unknown_me}": (404, "not_found"),
        f"/api/messages/{message.id + 1000}/media/{unknown_me}": (404, "not_found"),
    }
    for path, expected in cases.items():
        response = await stack.get(path)
        assert (response.status_code, error_code(response)) == expected, path


async def test_a_message_without_media_has_an_empty_list(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    sent = await sim.console_sms(
        stack.org.account_sid, **{"from": LINE, "to": CUSTOMER, "body": "Just words"}
    )
    message = await settled(stack, sent["sid"])
    listed = await media_list(stack, message.id)
    assert (listed.status_code, listed.json()) == (200, {"items": []})


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"status": 404}, 404, "not_found"),
        ({"status": 500}, 502, "twilio_unavailable"),
        ({"status": 503}, 502, "twilio_unavailable"),
        ({"delay_ms": 2600}, 502, "twilio_unavailable"),  # past the 2 s Twilio timeout
        ({"status": 429, "retry_after": 2}, 503, "twilio_rate_limited"),
    ],
)
async def test_twilio_failures_become_clear_errors(
    flow: tuple[Stack, Sim], fault: dict[str, Any], status: int, code: str
) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/a.png")
    url = await first_media_url(stack, message.id)
    await sim.add_fault(path_regex=MEDIA_PATH, method="GET", count=1, **fault)

    response = await stack.get(url)
    assert (response.status_code, error_code(response)) == (status, code)
    if status == 503:
        assert response.headers["retry-after"] == "2"
    # Nothing is cached on a failure, and the next request gets the file.
    assert "cache-control" not in response.headers
    assert (await stack.get(url)).status_code == 200
    org = (await stack.rows(Organization, Organization.id == stack.org.id))[0]
    assert org.twilio_credentials_valid is True


async def test_rejected_credentials_are_flagged(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/a.png")
    url = await first_media_url(stack, message.id)
    await sim.add_fault(path_regex=MEDIA_PATH, method="GET", status=401, count=1)

    response = await stack.get(url)
    assert (response.status_code, error_code(response)) == (502, "twilio_credentials_rejected")
    assert "reconnect" in response.json()["error"]["message"]
    org = (await stack.rows(Organization, Organization.id == stack.org.id))[0]
    assert org.twilio_credentials_valid is False
    assert org.twilio_credentials_error
    assert "Twilio rejected" in org.twilio_credentials_error
    settings = (await stack.get("/api/settings")).json()
    assert settings["twilio"]["credentials_valid"] is False

    # Until the org reconnects, Twilio is not asked again with the refused credentials.
    asked = len(await sim.call("GET", "/requests", path_contains="/Media/ME"))
    again = await stack.get(url)
    assert (again.status_code, error_code(again)) == (502, "twilio_credentials_rejected")
    assert len(await sim.call("GET", "/requests", path_contains="/Media/ME")) == asked


async def test_oversized_media_is_refused(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    message = await send_mms(stack, sim, "https://example.com/a.png")
    rows = await stack.rows(MessageMedia, MessageMedia.message_id == message.id)
    slots = media.FetchSlots(1)
    async with httpx.AsyncClient(timeout=5) as http:
        opening = media.open_media(
            db=stack.db,
            box=SecretBox(stack.settings.secret_keys),
            http=http,
            settings=stack.settings,
            slots=slots,
            org_id=stack.org.id,
            message_id=message.id,
            media_sid=rows[0].media_sid,
            max_bytes=len(tiny_png()) - 1,
        )
        with pytest.raises(media.MediaTooLarge):
            await opening
    assert slots.in_use(stack.org.id) == 0  # the refused download gave its slot back


# --- streaming: large files go through a chunk at a time ------------------------------------

MIB = 1024 * 1024


async def _true(value: bool) -> bool:
    return value


async def large_mms(stack: Stack, sim: Sim, size: int, **config: Any) -> str:
    """Send an MMS whose one file is ``size`` bytes; returns the app's URL for it."""
    await sim.call("PATCH", "/config", {"media_size_bytes": size, **config})
    message = await send_mms(stack, sim, "https://example.com/scan.bin")
    return await first_media_url(stack, message.id)


async def test_the_first_bytes_arrive_before_twilio_has_sent_the_whole_file(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    # 32 chunks of 64 KiB with 50 ms between them: the media host needs about 1.6 s.
    url = await large_mms(stack, sim, 2 * MIB, media_chunk_delay_ms=50)
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    loop = asyncio.get_running_loop()
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("GET", stack.url + url, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(2 * MIB)
        started = loop.time()
        first_at, received = None, 0
        async for chunk in response.aiter_raw():
            first_at = first_at if first_at is not None else loop.time()
            received += len(chunk)
        finished = loop.time()
    assert received == 2 * MIB
    assert first_at is not None
    # Relayed as it arrives: the browser had bytes long before the last chunk left Twilio.
    assert finished - first_at >= 1.0, (first_at - started, finished - started)


async def test_relaying_a_large_file_does_not_hold_it_in_memory(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    size = 48 * MIB
    stack.settings.media_max_bytes = 64 * MIB  # the app reads its settings per request
    url = await large_mms(stack, sim, size)
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    # The app, the simulator and this client share the process: tracemalloc sees them all.
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        received = 0
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", stack.url + url, headers=headers) as response,
        ):
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    # Socket buffers on the three loopback legs come and go (a few MiB, bounded by flow
    # control); holding the file whole would add at least its size, twice over before.
    assert peak - baseline < size / 3, f"peak grew by {(peak - baseline) / MIB:.1f} MiB"


async def test_a_declared_size_over_the_cap_is_refused_before_streaming(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    stack.settings.media_max_bytes = 1 * MIB
    url = await large_mms(stack, sim, 2 * MIB)
    response = await stack.get(url)
    assert (response.status_code, error_code(response)) == (502, "media_too_large")
    assert "cache-control" not in response.headers


async def test_an_undeclared_size_over_the_cap_cuts_the_download_short(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    stack.settings.media_max_bytes = 1 * MIB
    # The media host answers chunked, without a Content-Length: only counting can tell.
    url = await large_mms(stack, sim, 2 * MIB, media_content_length=False)
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    received = 0
    status, length = 0, None

    async def download() -> None:
        nonlocal received, status, length
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", stack.url + url, headers=headers) as response,
        ):
            status, length = response.status_code, response.headers.get("content-length")
            async for chunk in response.aiter_raw():
                received += len(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        await download()
    assert status == 200
    assert length is None
    # Never the whole file, and never presented as complete.
    assert received <= 1 * MIB
    # The aborted download gave its slot back.
    slots = stack.server.app.state.media_slots
    await eventually(lambda: _true(slots.in_use(stack.org.id) == 0), timeout=5)


async def test_downloads_in_flight_are_bounded_per_organization(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    stack.settings.media_per_org_concurrency = 1  # before the app's first media request
    url = await large_mms(stack, sim, 2 * MIB, media_chunk_delay_ms=100)  # about 3 s each
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("GET", stack.url + url, headers=headers) as first:
            assert first.status_code == 200
            chunks = first.aiter_raw()
            await anext(chunks)  # under way, and held open
            busy = await http.get(stack.url + url, headers=headers)
            assert (busy.status_code, error_code(busy)) == (429, "too_many_media_downloads")
            assert busy.headers["retry-after"] == "1"
        # The first download was abandoned by its client: its slot comes back.
        await sim.call("PATCH", "/config", {"media_chunk_delay_ms": 0})

        async def served() -> bool:
            return (await http.get(stack.url + url, headers=headers)).status_code == 200

        await eventually(served, timeout=10)


def test_content_type_rules() -> None:
    assert media.normalize_content_type("Image/PNG; charset=binary") == "image/png"
    assert media.normalize_content_type("text/html\r\nSet-Cookie: x=1") == (
        "application/octet-stream"
    )
    assert media.normalize_content_type(None) == "application/octet-stream"
    assert media.is_inline_safe("image/jpeg")
    assert media.is_inline_safe("video/mp4")
    for unsafe in ("image/svg+xml", "text/html", "application/pdf", "text/xml", "x/y"):
        assert not media.is_inline_safe(unsafe), unsafe
