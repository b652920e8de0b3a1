"""Connecting a Twilio account, importing its numbers and setting up the event sink, over
real HTTP: the app on a loopback port, the simulator standing in for Twilio."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from loquent.logging import configure_logging
from loquent.messaging.body_queue import claim_due_bodies
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization, PhoneNumber
from loquent.servers import ServerThread
from loquent.simulator.server import simulator_thread
from tests.conftest import Stack, running_stack

pytestmark = pytest.mark.asyncio


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Iterator[ServerThread]:
    with simulator_thread() as server:
        yield server


@dataclass
class Sim:
    url: str

    def call(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, f"{self.url}/_sim{path}", timeout=30, **kw)
        assert response.status_code < 400, response.text
        return response.json() if response.content else None

    def account(self, numbers: tuple[str, ...] = ()) -> tuple[str, str]:
        created = self.call("POST", "/accounts", json={})
        for number in numbers:
            self.call("POST", f"/accounts/{created['sid']}/numbers", json={"phone_number": number})
        return created["sid"], created["auth_token"]

    def fault(self, path_regex: str, **fields: Any) -> None:
        self.call("POST", "/faults", json={"path_regex": path_regex, **fields})

    def requests(self, contains: str) -> list[dict[str, Any]]:
        return list(self.call("GET", "/requests", params={"path_contains": contains}))

    def v1(self, path: str, sid: str, token: str) -> Any:
        response = httpx.get(f"{self.url}/v1{path}", auth=(sid, token), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def sim(simulator: ServerThread) -> Sim:
    handle = Sim(simulator.url)
    handle.call("POST", "/reset")
    return handle


@dataclass
class Tenant:
    org_id: int
    owner: str  # API tokens
    member: str


async def new_tenant(stack: Stack, name: str = "Harbor") -> Tenant:
    """An organization with no Twilio account yet, an owner and a plain member."""
    async with stack.db.session() as session:
        org = await orgs.create_organization(
            session, SecretBox(stack.settings.secret_keys), name=name
        )
        tokens = []
        for role in ("owner", "member"):
            user = await orgs.get_or_create_user(session, f"{secrets.token_hex(4)}@example.com")
            await orgs.ensure_member(session, user, org.id, role)
            tokens.append(await orgs.create_api_token(session, user, org.id))
        await session.commit()
    return Tenant(org.id, tokens[0], tokens[1])


@pytest.fixture
async def app(database_url: str, sim: Sim) -> AsyncIterator[Stack]:
    async with running_stack(
        database_url, twilio_api_base=sim.url, twilio_events_api_base=sim.url
    ) as running:
        yield running


async def call(
    stack: Stack, method: str, path: str, token: str, body: Any = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(
            method,
            stack.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )


async def org_row(stack: Stack, org_id: int) -> Organization:
    [row] = await stack.rows(Organization, Organization.id == org_id)
    return row


async def snapshot(stack: Stack, org_id: int) -> tuple[Any, ...]:
    """What a failed action must leave exactly as it was."""
    row = await org_row(stack, org_id)
    lines = await stack.count(PhoneNumber, PhoneNumber.organization_id == org_id)
    return (
        row.twilio_account_sid,
        row.twilio_auth_token,
        row.twilio_credentials_valid,
        row.sink_sid,
        row.subscription_sid,
        lines,
        await stack.count(Organization),
    )


async def connected(
    stack: Stack, sim: Sim, numbers: tuple[str, ...] = ()
) -> tuple[Tenant, str, str]:
    tenant = await new_tenant(stack)
    sid, token = sim.account(numbers)
    response = await call(
        stack,
        "POST",
        "/api/twilio/connect",
        tenant.owner,
        {"account_sid": sid, "auth_token": token},
    )
    assert response.status_code == 200, response.text
    return tenant, sid, token


# --- connect --------------------------------------------------------------------------------


async def test_connect_checks_with_twilio_then_stores_the_token_encrypted(
    app: Stack, sim: Sim
) -> None:
    tenant = await new_tenant(app)
    sid, token = sim.account()
    before = await snapshot(app, tenant.org_id)

    malformed = await call(
        app,
        "POST",
        "/api/twilio/connect",
        tenant.owner,
        {"account_sid": "AC123", "auth_token": "x"},
    )
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "invalid_account_sid"
    assert sim.requests("/Accounts/AC123") == []  # refused before calling Twilio

    wrong = await call(
        app, "POST", "/api/twilio/connect", tenant.owner, {"account_sid": sid, "auth_token": "nope"}
    )
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "twilio_rejected_credentials"
    assert await snapshot(app, tenant.org_id) == before

    good = await call(
        app, "POST", "/api/twilio/connect", tenant.owner, {"account_sid": sid, "auth_token": token}
    )
    assert good.status_code == 200
    assert good.json() == {"account_sid": f"AC••••{sid[-4:]}", "connected": True}
    assert token not in good.text

    row = await org_row(app, tenant.org_id)
    assert row.twilio_account_sid == sid
    assert row.twilio_auth_token
    assert token not in row.twilio_auth_token
    assert SecretBox(app.settings.secret_keys).decrypt(row.twilio_auth_token) == token
    [validation] = [r for r in sim.requests(f"/Accounts/{sid}.json") if r["status"] == 200]
    assert validation["method"] == "GET"
    assert validation["auth_user"] == sid

    view = (await call(app, "GET", "/api/settings", tenant.owner)).json()
    assert view["twilio"]["connected"] is True
    assert view["twilio"]["account_sid_masked"] == f"AC••••{sid[-4:]}"
    assert view["twilio"]["credentials_valid"] is True
    assert view["twilio"]["credentials_checked_at"] is not None
    assert token not in json.dumps(view)


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"status": 401}, 422, "twilio_rejected_credentials"),
        ({"status": 404}, 422, "twilio_rejected_credentials"),
        ({"status": 500}, 502, "twilio_unreachable"),
        ({"status": 429, "retry_after": 7}, 503, "twilio_rate_limited"),
        ({"delay_ms": 2600}, 502, "twilio_unreachable"),  # the app's timeout is 2 s
    ],
)
async def test_connect_failures_write_nothing(
    app: Stack, sim: Sim, fault: dict[str, Any], status: int, code: str
) -> None:
    tenant = await new_tenant(app)
    sid, token = sim.account()
    sim.fault(r"/Accounts/AC[0-9a-f]+\.json$", count=1, **fault)
    before = await snapshot(app, tenant.org_id)

    response = await call(
        app, "POST", "/api/twilio/connect", tenant.owner, {"account_sid": sid, "auth_token": token}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    if status == 503:
        assert response.headers["Retry-After"] == "7"
    assert await snapshot(app, tenant.org_id) == before


async def test_an_account_connected_elsewhere_is_a_conflict(app: Stack, sim: Sim) -> None:
    first, sid, token = await connected(app, sim)
    second = await new_tenant(app, "Other")
    before = await snapshot(app, second.org_id)
    response = await call(
        app, "POST", "/api/twilio/connect", second.owner, {"account_sid": sid, "auth_token": token}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "twilio_account_in_use"
    assert await snapshot(app, second.org_id) == before
    assert (await org_row(app, first.org_id)).twilio_account_sid == sid


async def test_reconnecting_with_a_rotated_token_resumes_the_org(app: Stack, sim: Sim) -> None:
    tenant, sid, _ = await connected(app, sim)
    async with app.db.session() as session:
        await orgs.mark_credentials_invalid(session, tenant.org_id, "Authenticate")
        await session.execute(
            update(Organization)
            .where(Organization.id == tenant.org_id)
            .values(signature_failures=3)
        )
        await session.commit()
    view = (await call(app, "GET", "/api/settings", tenant.owner)).json()
    assert view["twilio"]["credentials_valid"] is False
    assert view["webhooks"]["signature_failures"] == 3

    rotated = sim.call("POST", f"/accounts/{sid}/rotate-token", json={})["auth_token"]
    response = await call(
        app,
        "POST",
        "/api/twilio/connect",
        tenant.owner,
        {"account_sid": sid, "auth_token": rotated},
    )
    assert response.status_code == 200
    row = await org_row(app, tenant.org_id)
    assert row.twilio_credentials_valid is True
    assert row.twilio_credentials_error is None
    assert row.signature_failures == 0
    assert SecretBox(app.settings.secret_keys).decrypt(row.twilio_auth_token or "") == rotated


async def test_paused_enrichment_is_claimable_after_reconnecting(app: Stack, sim: Sim) -> None:
    from datetime import timedelta

    from loquent.contacts.models import Contact
    from loquent.db import utcnow
    from loquent.messaging.models import Message

    tenant, sid, token = await connected(app, sim)
    async with app.db.session() as session:
        contact = Contact(
            organization_id=tenant.org_id, first_name="", last_name="", source="manual"
        )
        session.add(contact)
        await session.flush()
        session.add(
            Message(
                organization_id=tenant.org_id,
                contact_id=contact.id,
                direction="outbound",
                from_address="+14155550100",
                to_address="+14155550123",
                status="sent",
                external_id="SM" + secrets.token_hex(16),
                body_state="pending",
                body_next_attempt_at=utcnow() - timedelta(seconds=1),
            )
        )
        failed_sid = "SM" + secrets.token_hex(16)
        session.add(  # failed while the old token was refused
            Message(
                organization_id=tenant.org_id,
                contact_id=contact.id,
                direction="outbound",
                from_address="+14155550100",
                to_address="+14155550123",
                status="sent",
                external_id=failed_sid,
                body_state="failed",
                body_error="Twilio refused the credentials",
            )
        )
        await orgs.mark_credentials_invalid(session, tenant.org_id, "Authenticate")
        await session.commit()

    async def claimable() -> int:
        async with app.db.session() as session:
            claims = await claim_due_bodies(
                session, now=utcnow(), limit=10, lease_seconds=1, per_org_cap=10
            )
            await session.rollback()
        return len([c for c in claims if c.organization_id == tenant.org_id])

    assert await claimable() == 0
    response = await call(
        app, "POST", "/api/twilio/connect", tenant.owner, {"account_sid": sid, "auth_token": token}
    )
    assert response.status_code == 200
    assert await claimable() == 2  # the paused body, and the failed one requeued
    async with app.db.reader() as session:
        requeued = (
            await session.execute(select(Message).where(Message.external_id == failed_sid))
        ).scalar_one()
    assert requeued.body_state == "pending"
    assert requeued.body_error is None


# --- numbers --------------------------------------------------------------------------------

NUMBERS = ("+14155550170", "+14155550171", "+14155550172", "+14155550173", "+14155550174")


async def test_numbers_are_listed_from_every_page(app: Stack, sim: Sim) -> None:
    sim.call("PATCH", "/config", json={"max_page_size": 2})
    tenant, _sid, _ = await connected(app, sim, NUMBERS)
    async with app.db.session() as session:
        await orgs.add_phone_number(session, tenant.org_id, NUMBERS[1])
        await session.commit()

    response = await call(app, "GET", "/api/twilio/numbers", tenant.member)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["phone_number"] for item in items] == list(NUMBERS)
    assert [item["imported"] for item in items] == [False, True, False, False, False]
    assert all(item["sid"].startswith("PN") and item["friendly_name"] for item in items)
    pages = [r for r in sim.requests("/IncomingPhoneNumbers.json") if r["status"] == 200]
    assert len(pages) == 3  # 2 + 2 + 1, following next_page_uri


async def test_sync_numbers_imports_once_and_names_unknown_numbers(app: Stack, sim: Sim) -> None:
    tenant, _sid, _ = await connected(app, sim, NUMBERS[:3])
    async with app.db.session() as session:  # added by hand earlier, without its Twilio SID
        await orgs.add_phone_number(session, tenant.org_id, NUMBERS[0])
        await session.commit()
    before = await snapshot(app, tenant.org_id)

    unknown = await call(
        app,
        "POST",
        "/api/twilio/sync-numbers",
        tenant.owner,
        {"numbers": [NUMBERS[1], "+14155559999"]},
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "number_not_on_account"
    assert "+14155559999" in unknown.json()["error"]["message"]
    assert await snapshot(app, tenant.org_id) == before

    bad = await call(app, "POST", "/api/twilio/sync-numbers", tenant.owner, {"numbers": ["hello"]})
    assert bad.status_code == 422
    assert await snapshot(app, tenant.org_id) == before

    some = await call(
        app, "POST", "/api/twilio/sync-numbers", tenant.owner, {"numbers": [NUMBERS[1]]}
    )
    assert some.json() == {"imported": 1, "existing": 0}
    everything = await call(app, "POST", "/api/twilio/sync-numbers", tenant.owner, {})
    assert everything.json() == {"imported": 1, "existing": 2}
    again = await call(app, "POST", "/api/twilio/sync-numbers", tenant.owner)
    assert again.json() == {"imported": 0, "existing": 3}

    lines = await app.rows(PhoneNumber, PhoneNumber.organization_id == tenant.org_id)
    assert sorted(line.number for line in lines) == sorted(NUMBERS[:3])
    assert all(line.twilio_sid and line.twilio_sid.startswith("PN") for line in lines)
    assert all(line.friendly_name.startswith("(415)") for line in lines)


async def test_numbers_when_twilio_fails(app: Stack, sim: Sim) -> None:
    tenant, sid, _ = await connected(app, sim, NUMBERS[:2])
    before = await snapshot(app, tenant.org_id)
    sim.fault(r"/IncomingPhoneNumbers\.json$", status=500, count=1)
    failed = await call(app, "POST", "/api/twilio/sync-numbers", tenant.owner)
    assert failed.status_code == 502
    assert await snapshot(app, tenant.org_id) == before

    sim.fault(r"/IncomingPhoneNumbers\.json$", status=429, retry_after=3, count=1)
    limited = await call(app, "GET", "/api/twilio/numbers", tenant.owner)
    assert limited.status_code == 503
    assert limited.headers["Retry-After"] == "3"

    sim.call("POST", f"/accounts/{sid}/rotate-token", json={})  # the stored token is now wrong
    rejected = await call(app, "GET", "/api/twilio/numbers", tenant.owner)
    assert rejected.status_code == 422
    assert rejected.json()["error"]["code"] == "twilio_rejected_credentials"
    assert (await org_row(app, tenant.org_id)).twilio_credentials_valid is False


async def test_not_connected_is_a_conflict(app: Stack, sim: Sim) -> None:
    tenant = await new_tenant(app)
    for method, path in [
        ("GET", "/api/twilio/numbers"),
        ("POST", "/api/twilio/sync-numbers"),
        ("POST", "/api/twilio/setup-event-sink"),
    ]:
        response = await call(app, method, path, tenant.owner)
        assert response.status_code == 409, (path, response.text)
        assert response.json()["error"]["code"] == "twilio_not_connected"


# --- event sink -----------------------------------------------------------------------------


async def wait_verified(stack: Stack, org_id: int, timeout_s: float = 15) -> Organization:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        row = await org_row(stack, org_id)
        if row.sink_verified_at is not None:
            return row
        assert asyncio.get_running_loop().time() < deadline, "the sink test event never arrived"
        await asyncio.sleep(0.2)


async def test_setting_up_the_sink_twice_leaves_one_sink_and_one_subscription(
    app: Stack, sim: Sim
) -> None:
    sim.call("PATCH", "/config", json={"max_page_size": 1})
    tenant, sid, token = await connected(app, sim)
    # Someone else's sink for another app is left alone and found past the first page.
    other = sim.call(
        "POST", f"/accounts/{sid}/sinks", json={"destination": "https://elsewhere.example/hook"}
    )

    first = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["reused"] is False
    assert body["test_requested"] is True
    assert body["destination"] == f"{app.url}/twilio/events"

    second = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert second.status_code == 200, second.text
    assert second.json()["sink_sid"] == body["sink_sid"]
    assert second.json()["subscription_sid"] == body["subscription_sid"]
    assert second.json()["reused"] is True

    sinks = [s for s in await _all(sim, "/Sinks", "sinks", sid, token)]
    assert sorted(s["sid"] for s in sinks) == sorted([other["sink_sid"], body["sink_sid"]])
    [ours] = [s for s in sinks if s["sid"] == body["sink_sid"]]
    assert ours["sink_type"] == "webhook"
    assert ours["sink_configuration"] == {
        "destination": f"{app.url}/twilio/events",
        "method": "POST",
        "batch_events": True,
    }
    subscriptions = await _all(
        sim, f"/Subscriptions?SinkSid={body['sink_sid']}", "subscriptions", sid, token
    )
    assert [s["sid"] for s in subscriptions] == [body["subscription_sid"]]
    types = sim.v1(f"/Subscriptions/{body['subscription_sid']}/SubscribedEvents", sid, token)
    assert {(t["type"], t["schema_version"]) for t in types["types"]} == {
        ("com.twilio.messaging.inbound-message.received", 6),
        *(
            (f"com.twilio.messaging.message.{s}", 4)
            for s in ("queued", "sent", "delivered", "undelivered", "failed", "read")
        ),
    }

    row = await wait_verified(app, tenant.org_id)
    assert row.sink_sid == body["sink_sid"]
    assert row.sink_created_here is True
    view = (await call(app, "GET", "/api/settings", tenant.member)).json()["event_sink"]
    assert view["verified_at"] is not None
    assert view["sms_events_active"] is True

    removed = await call(app, "POST", "/api/twilio/remove-event-sink", tenant.owner)
    assert removed.status_code == 200
    assert set(removed.json()["removed"]) == {body["sink_sid"], body["subscription_sid"]}
    remaining = await _all(sim, "/Sinks", "sinks", sid, token)
    assert [s["sid"] for s in remaining] == [other["sink_sid"]]  # only the foreign one
    assert (
        await _all(sim, f"/Subscriptions?SinkSid={body['sink_sid']}", "subscriptions", sid, token)
        == []
    )
    row = await org_row(app, tenant.org_id)
    assert row.sink_sid is None
    assert row.subscription_sid is None
    assert not row.sms_events_active


async def _all(sim: Sim, path: str, key: str, sid: str, token: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url: str | None = f"{sim.url}/v1{path}"
    async with httpx.AsyncClient(auth=(sid, token), timeout=10) as http:
        while url:
            page = (await http.get(url)).json()
            items.extend(page[key])
            url = page["meta"]["next_page_url"]
    return items


async def test_an_existing_sink_is_reused_and_left_alone_on_removal(app: Stack, sim: Sim) -> None:
    tenant, sid, token = await connected(app, sim)
    made_in_console = sim.call(
        "POST", f"/accounts/{sid}/sinks", json={"destination": f"{app.url}/twilio/events"}
    )
    setup = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert setup.json()["reused"] is True
    assert setup.json()["sink_sid"] == made_in_console["sink_sid"]
    assert setup.json()["subscription_sid"] == made_in_console["subscription_sid"]

    removed = await call(app, "POST", "/api/twilio/remove-event-sink", tenant.owner)
    assert removed.json() == {
        "removed": [],
        "left_alone": [made_in_console["subscription_sid"], made_in_console["sink_sid"]],
    }
    assert [s["sid"] for s in await _all(sim, "/Sinks", "sinks", sid, token)] == [
        made_in_console["sink_sid"]
    ]


async def test_a_failed_subscription_removes_the_sink_just_created(app: Stack, sim: Sim) -> None:
    tenant, sid, token = await connected(app, sim)
    before = await snapshot(app, tenant.org_id)
    sim.fault(r"^/v1/Subscriptions$", method="POST", status=500, count=1)
    response = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "twilio_unreachable"
    assert await _all(sim, "/Sinks", "sinks", sid, token) == []
    assert await snapshot(app, tenant.org_id) == before

    sim.fault(r"^/v1/Sinks$", method="GET", status=404, count=1)
    missing = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert missing.status_code == 502
    assert missing.json()["error"]["code"] == "twilio_error"
    assert await snapshot(app, tenant.org_id) == before


async def test_disconnect_removes_the_credentials_and_what_we_created(app: Stack, sim: Sim) -> None:
    tenant, sid, token = await connected(app, sim)
    setup = (await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)).json()
    sim.fault(
        rf"^/v1/Subscriptions/{setup['subscription_sid']}$", method="DELETE", status=500, count=1
    )

    response = await call(app, "POST", "/api/twilio/disconnect", tenant.owner)
    assert response.status_code == 200
    body = response.json()
    assert body["connected"] is False
    assert body["removed"] == [setup["sink_sid"]]  # deleting the sink took the subscription too
    assert body["not_removed"][0]["sid"] == setup["subscription_sid"]
    assert await _all(sim, "/Sinks", "sinks", sid, token) == []

    row = await org_row(app, tenant.org_id)
    assert row.twilio_account_sid is None
    assert row.twilio_auth_token is None
    assert row.sink_sid is None
    view = (await call(app, "GET", "/api/settings", tenant.owner)).json()
    assert view["twilio"]["connected"] is False
    assert view["twilio"]["account_sid_masked"] is None


# --- owners only ----------------------------------------------------------------------------


async def test_members_are_refused_every_owner_action(app: Stack, sim: Sim) -> None:
    tenant, sid, token = await connected(app, sim, NUMBERS[:1])
    before = await snapshot(app, tenant.org_id)
    sim.call("DELETE", "/requests")
    for path, body in [
        ("/api/twilio/connect", {"account_sid": sid, "auth_token": token}),
        ("/api/twilio/disconnect", None),
        ("/api/twilio/sync-numbers", {}),
        ("/api/twilio/setup-event-sink", None),
        ("/api/twilio/remove-event-sink", None),
    ]:
        response = await call(app, "POST", path, tenant.member, body)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "forbidden"
    assert sim.call("GET", "/requests") == []  # nothing reached Twilio
    assert await snapshot(app, tenant.org_id) == before
    assert (await call(app, "GET", "/api/twilio/numbers", tenant.member)).status_code == 200


# --- secrets ---------------------------------------------------------------------------------


async def test_the_auth_token_never_reaches_the_logs(
    sqlite_url: str, sim: Sim, capfd: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(
        sqlite_url, twilio_api_base=sim.url, twilio_events_api_base=sim.url, log_level="DEBUG"
    ) as app:
        tenant = await new_tenant(app)
        sid, token = sim.account()
        wrong_token = secrets.token_hex(16)
        rejected = await call(
            app,
            "POST",
            "/api/twilio/connect",
            tenant.owner,
            {"account_sid": sid, "auth_token": wrong_token},
        )
        assert rejected.status_code == 422
        accepted = await call(
            app,
            "POST",
            "/api/twilio/connect",
            tenant.owner,
            {"account_sid": sid, "auth_token": token},
        )
        assert accepted.status_code == 200
        await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    configure_logging(level="WARNING")  # as every other test leaves it: no DEBUG afterwards
    logs = "".join(capfd.readouterr())
    assert "twilio.connect_refused" in logs
    assert "twilio.connected" in logs
    assert token not in logs
    assert wrong_token not in logs


async def test_connecting_another_account_forgets_the_old_sink(app: Stack, sim: Sim) -> None:
    tenant, _, _ = await connected(app, sim)
    setup = await call(app, "POST", "/api/twilio/setup-event-sink", tenant.owner)
    assert setup.status_code == 200
    assert (await org_row(app, tenant.org_id)).sink_sid == setup.json()["sink_sid"]

    other_sid, other_token = sim.account()
    response = await call(
        app,
        "POST",
        "/api/twilio/connect",
        tenant.owner,
        {"account_sid": other_sid, "auth_token": other_token},
    )
    assert response.status_code == 200
    row = await org_row(app, tenant.org_id)
    assert row.twilio_account_sid == other_sid
    assert row.sink_sid is None
    assert row.subscription_sid is None
    assert not row.sms_events_active
