"""The Twilio REST client: error mapping, paging, and where the credentials may go."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pytest

from loquent.twilio.client import (
    TwilioAuthError,
    TwilioBadRequest,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
    TwilioUnavailable,
    build_http_client,
    parse_retry_after,
    parse_twilio_date,
)

from .conftest import SimControl

API = "https://api.twilio.test"
SID = "AC" + "1" * 32
TOKEN = "s3cr3t-token-value"
AUTH_HEADER = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, api_base: str = API) -> TwilioClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TwilioClient(api_base, SID, TOKEN, timeout=1.0, http=http)


def twilio_error(status: int, code: int, message: str, **headers: str) -> httpx.Response:
    body = {"code": code, "message": message, "status": status}
    return httpx.Response(status, json=body, headers=headers)


# --- dates ---


def test_parse_twilio_date_is_aware_utc() -> None:
    parsed = parse_twilio_date("Mon, 23 Nov 2026 10:00:00 +0000")
    assert parsed == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert parse_twilio_date("Mon, 23 Nov 2026 12:00:00 +0200") == parsed
    assert parse_twilio_date("Mon, 23 Nov 2026 10:00:00 -0000") == parsed


@pytest.mark.parametrize("value", [None, "", "yesterday", "Mon, 99 Nov 2026 10:00:00 +0000"])
def test_parse_twilio_date_tolerates_garbage(value: str | None) -> None:
    assert parse_twilio_date(value) is None


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0


# --- errors ---


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "error_class"),
    [
        (twilio_error(401, 20003, "Authenticate"), TwilioAuthError),
        (twilio_error(403, 20403, "Forbidden"), TwilioAuthError),
        (twilio_error(404, 20404, "not found"), TwilioNotFound),
        (twilio_error(429, 20429, "Too Many Requests"), TwilioRateLimited),
        (twilio_error(500, 20500, "Internal Server Error"), TwilioUnavailable),
        (httpx.Response(503, text="<html>gateway</html>"), TwilioUnavailable),
        (twilio_error(400, 21211, "Invalid 'To' Phone Number"), TwilioBadRequest),
        (httpx.Response(302, headers={"Location": "https://elsewhere.test/"}), TwilioError),
    ],
)
async def test_error_classes(response: httpx.Response, error_class: type[TwilioError]) -> None:
    client = make_client(lambda _request: response)
    with pytest.raises(error_class) as caught:
        await client.fetch_message("SM1")
    assert caught.value.status == response.status_code
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)


@pytest.mark.asyncio
async def test_error_carries_twilio_code_and_message() -> None:
    client = make_client(lambda _r: twilio_error(404, 20404, "The resource was not found"))
    with pytest.raises(TwilioNotFound) as caught:
        await client.fetch_message("SM1")
    assert caught.value.code == 20404
    assert caught.value.message == "The resource was not found"


@pytest.mark.asyncio
@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), (None, None)])
async def test_rate_limited_retry_after(header: str | None, expected: float | None) -> None:
    headers = {"Retry-After": header} if header else {}
    client = make_client(lambda _r: twilio_error(429, 20429, "Too Many Requests", **headers))
    with pytest.raises(TwilioRateLimited) as caught:
        await client.fetch_message("SM1")
    assert caught.value.retry_after == expected


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")]
)
async def test_transport_failures_are_unavailable(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = make_client(handler)
    with pytest.raises(TwilioUnavailable) as caught:
        await client.fetch_message("SM1")
    assert caught.value.status is None
    assert caught.value.__cause__ is None  # the httpx error (and its request) is not chained


@pytest.mark.asyncio
async def test_invalid_json_is_unavailable() -> None:
    client = make_client(lambda _r: httpx.Response(200, text="not json"))
    with pytest.raises(TwilioUnavailable):
        await client.fetch_account()


# --- requests ---


@pytest.mark.asyncio
async def test_fetch_message_uses_basic_auth_on_the_api_host() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sid": "SM1", "body": "hi"})

    client = make_client(handler)
    assert (await client.fetch_message("SM1"))["body"] == "hi"
    (request,) = seen
    assert str(request.url) == f"{API}/2010-04-01/Accounts/{SID}/Messages/SM1.json"
    assert request.headers["Authorization"] == AUTH_HEADER


@pytest.mark.asyncio
async def test_sid_cannot_climb_out_of_its_path_segment() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    await make_client(handler).fetch_message("../../Accounts/ACother")
    assert seen == [f"/2010-04-01/Accounts/{SID}/Messages/..%2F..%2FAccounts%2FACother.json"]


@pytest.mark.asyncio
async def test_api_base_with_a_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"sid": SID})

    await make_client(handler, api_base=f"{API}/twilio/").fetch_account()
    assert seen == [f"/twilio/2010-04-01/Accounts/{SID}.json"]


@pytest.mark.asyncio
async def test_iter_messages_follows_next_page_uri() -> None:
    seen: list[httpx.URL] = []
    base = f"/2010-04-01/Accounts/{SID}/Messages.json"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        page = int(request.url.params.get("Page", "0"))
        next_uri = f"{base}?PageSize=2&Page={page + 1}&PageToken=PT{page + 1}" if page < 2 else None
        messages = [{"sid": f"SM{page}{i}"} for i in range(2 if page < 2 else 1)]
        return httpx.Response(200, json={"messages": messages, "next_page_uri": next_uri})

    client = make_client(handler)
    pages = client.iter_messages(page_size=2, date_sent_after=date(2026, 1, 2))
    sids = [m["sid"] async for m in pages]
    assert sids == ["SM00", "SM01", "SM10", "SM11", "SM20"]
    first = parse_qs(seen[0].query.decode())
    assert first == {"PageSize": ["2"], "DateSent>": ["2026-01-02"]}
    assert seen[2].params["PageToken"] == "PT2"
    assert all(url.host == "api.twilio.test" for url in seen)


@pytest.mark.asyncio
async def test_next_page_on_another_host_is_refused_before_sending_credentials() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(
            200, json={"messages": [{"sid": "SM1"}], "next_page_uri": "https://evil.test/steal"}
        )

    client = make_client(handler)
    with pytest.raises(TwilioError, match="refusing"):
        _ = [m async for m in client.iter_messages()]
    assert hosts == ["api.twilio.test"]


@pytest.mark.asyncio
async def test_list_incoming_numbers_pages() -> None:
    path = f"/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json"

    def handler(request: httpx.Request) -> httpx.Response:
        if "Page" not in request.url.params:
            assert request.url.params["PageSize"] == "1000"
            return httpx.Response(
                200,
                json={
                    "incoming_phone_numbers": [{"phone_number": "+15550001000"}],
                    "next_page_uri": f"{path}?Page=1&PageSize=1000&PageToken=PN1",
                },
            )
        return httpx.Response(
            200,
            json={
                "incoming_phone_numbers": [{"phone_number": "+15550001001"}],
                "next_page_uri": None,
            },
        )

    numbers = await make_client(handler).list_incoming_numbers()
    assert [n["phone_number"] for n in numbers] == ["+15550001000", "+15550001001"]


@pytest.mark.asyncio
async def test_create_message_posts_a_form() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM9", "status": "queued"})

    result = await make_client(handler).create_message(
        from_="+15550001000", to="+15550002000", body="hi there", status_callback="https://cb"
    )
    assert result["sid"] == "SM9"
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "From": ["+15550001000"],
        "To": ["+15550002000"],
        "Body": ["hi there"],
        "StatusCallback": ["https://cb"],
    }


@pytest.mark.asyncio
async def test_media_redirect_to_another_host_drops_the_credentials() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization")))
        if request.url.host == "api.twilio.test":
            return httpx.Response(307, headers={"Location": "https://media.cdn.test/ME1?sig=x"})
        return httpx.Response(200, content=b"\x89PNG", headers={"Content-Type": "image/png"})

    media = await make_client(handler).fetch_media_content(
        f"/2010-04-01/Accounts/{SID}/Messages/MM1/Media/ME1.json"
    )
    assert media.content_type == "image/png"
    assert media.content == b"\x89PNG"
    assert seen == [("api.twilio.test", AUTH_HEADER), ("media.cdn.test", None)]


@pytest.mark.asyncio
async def test_media_content_from_a_payload_url_on_another_host_is_refused() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    client = make_client(handler)
    with pytest.raises(TwilioError, match="refusing"):
        await client.fetch_media_content("https://evil.test/2010-04-01/Accounts/x/Media/ME1")
    assert calls == []


def test_token_never_in_repr() -> None:
    client = TwilioClient(API, SID, TOKEN, timeout=1.0, http=httpx.AsyncClient())
    assert TOKEN not in repr(client)
    assert SID in repr(client)


@pytest.mark.asyncio
async def test_shared_http_client_keeps_no_cookies() -> None:
    # A tenant's cookie must never ride along on another tenant's request.
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(200, json={}, headers={"Set-Cookie": "session=abc; Path=/"})

    http = build_http_client(timeout=1.0)
    http._transport = httpx.MockTransport(handler)  # the factory's settings, a fake network
    client = TwilioClient(API, SID, TOKEN, timeout=1.0, http=http)
    await client.fetch_account()
    await client.fetch_account()
    assert seen == [None, None]
    await http.aclose()


# --- against the simulator ---


@pytest.mark.asyncio
async def test_against_the_simulator(sim: SimControl) -> None:
    account = sim.create_account()
    sid = sim.seed_message(account["sid"], body="hello", media_urls=["https://x.test/a.png"])
    # The media host is "localhost": the same server under another name, so another origin.
    sim.patch_config(media_base_url=f"http://localhost:{sim.port}")
    async with TwilioClient(sim.url, account["sid"], account["auth_token"], timeout=5) as client:
        assert (await client.fetch_account())["sid"] == account["sid"]
        message = await client.fetch_message(sid)
        assert message["body"] == "hello"
        assert message["num_media"] == "1"
        (media,) = await client.list_media(sid)
        content = await client.fetch_media_content(media["uri"])
        assert content.content_type == "image/png"
    assert [f["had_authorization"] for f in sim.media_fetches()] == [False]

    async with TwilioClient(sim.url, account["sid"], "wrong", timeout=5) as client:
        with pytest.raises(TwilioAuthError):
            await client.fetch_account()
