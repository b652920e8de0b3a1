"""The JSON API: contacts list, conversations, paging, auth, errors."""

from __future__ import annotations

import httpx

from tests.conftest import Stack
from tests.support.twilio import new_sid, status_event

LINE = "+14155550100"


async def send(stack: Stack, to: str, at: str, status: str = "sent") -> str:
    sid = new_sid("SM")
    event = status_event(status, sid=sid, account=stack.org.account_sid, from_=LINE, to=to, at=at)
    assert (await stack.post_events([event])).status_code == 200
    return sid


async def test_contacts_are_ordered_by_last_contact_and_paged(stack: Stack) -> None:
    await send(stack, "+14155550001", "2026-11-20T10:00:00.000Z")
    await send(stack, "+14155550002", "2026-11-22T10:00:00.000Z")
    await send(stack, "+14155550003", "2026-11-21T10:00:00.000Z")
    latest = await send(stack, "+14155550001", "2026-11-23T10:00:00.000Z")

    first = (await stack.get("/api/contacts?limit=2")).json()
    assert [c["phone"] for c in first["items"]] == ["+14155550001", "+14155550002"]
    assert first["items"][0]["last_message"]["external_id"] == latest
    assert first["items"][0]["name"] == "+14155550001"  # stubs show their number
    second = (await stack.get(f"/api/contacts?limit=2&cursor={first['next_cursor']}")).json()
    assert [c["phone"] for c in second["items"]] == ["+14155550003"]
    assert second["next_cursor"] is None


async def test_conversation_pages_backwards_oldest_first(stack: Stack) -> None:
    sids = [await send(stack, "+14155550001", f"2026-11-2{d}T10:00:00.000Z") for d in range(5)]
    contact_id = (await stack.get("/api/contacts")).json()["items"][0]["id"]
    page = (await stack.get(f"/api/contacts/{contact_id}/messages?limit=2")).json()
    assert [m["external_id"] for m in page["items"]] == sids[3:]
    older = (
        await stack.get(f"/api/contacts/{contact_id}/messages?limit=2&before={page['next_cursor']}")
    ).json()
    assert [m["external_id"] for m in older["items"]] == sids[1:3]
    oldest = (
        await stack.get(
            f"/api/contacts/{contact_id}/messages?limit=2&before={older['next_cursor']}"
        )
    ).json()
    assert [m["external_id"] for m in oldest["items"]] == sids[:1]
    assert oldest["next_cursor"] is None
    message = oldest["items"][0]
    assert set(message) == {
        "id",
        "organization_id",
        "contact_id",
        "phone_number_id",
        "channel",
        "direction",
        "from_address",
        "to_address",
        "body",
        "body_state",
        "status",
        "error_code",
        "source",
        "external_id",
        "num_media",
        "created_at",
        "updated_at",
    }


async def test_other_orgs_contacts_are_invisible(stack: Stack) -> None:
    await send(stack, "+14155550001", "2026-11-20T10:00:00.000Z")
    contact_id = (await stack.get("/api/contacts")).json()["items"][0]["id"]
    other = await stack.add_org("Other", ["+14155550177"])
    assert (await stack.get("/api/contacts", org=other)).json()["items"] == []
    response = await stack.get(f"/api/contacts/{contact_id}/messages", org=other)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_bad_input_gets_a_clear_4xx(stack: Stack) -> None:
    for path, status in [
        ("/api/contacts?cursor=%%%", 400),
        ("/api/contacts?cursor=WzEsMiwzXQ", 400),
        ("/api/contacts?limit=0", 422),
        ("/api/contacts?limit=abc", 422),
        ("/api/contacts/abc/messages", 422),
        ("/api/contacts/999999/messages", 404),
        ("/api/contacts/1/messages?before=bm9wZQ", 400),
    ]:
        response = await stack.get(path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["message"], path


async def test_authentication_is_required(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            response = await http.get(f"{stack.url}/api/contacts", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"


async def test_health_metrics_and_openapi(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{stack.url}/healthz")).json()["status"] == "ok"
        metrics = await http.get(f"{stack.url}/metrics")
        assert "loquent_twilio_events_total" in metrics.text
        spec = (await http.get(f"{stack.url}/openapi.json")).json()
        assert "/twilio/events" in spec["paths"]
        assert "/api/contacts" in spec["paths"]
