"""The Event Streams v1 routes: webhook Sinks and Subscriptions (``events.twilio.com/v1``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData

from loquent.simulator.auth import authenticate
from loquent.simulator.core import Simulator
from loquent.simulator.delivery import DeliveryOptions
from loquent.simulator.errors import bad_request, not_found
from loquent.simulator.events import SCHEMA_VERSIONS, new_test_id, sink_test_event
from loquent.simulator.paging import Page, page_links, paginate, parse_page_request
from loquent.simulator.representations import (
    sink_json,
    subscribed_event_json,
    subscription_json,
)
from loquent.simulator.state import Account, Sink, Subscription

router = APIRouter(prefix="/v1", include_in_schema=False)

DEFAULT_SCHEMA_VERSION = 1


def simulator(request: Request) -> Simulator:
    sim: Simulator = request.app.state.simulator
    return sim


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _required(form: FormData, name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value:
        raise bad_request(20001, f"Missing required parameter {name} in the post body")
    return value


def _meta(
    request: Request, key: str, filters: list[tuple[str, str]], page: Page[Any]
) -> dict[str, Any]:
    base = _base_url(request)
    links = page_links(request.url.path, filters, page, lambda item: item.sid)

    def absolute(uri: str | None) -> str | None:
        return f"{base}{uri}" if uri else None

    return {
        "page": page.request.page,
        "page_size": page.request.page_size,
        "first_page_url": absolute(links["first_page_uri"]),
        "previous_page_url": absolute(links["previous_page_uri"]),
        "url": absolute(links["uri"]),
        "next_page_url": absolute(links["next_page_uri"]),
        "key": key,
    }


def _sink_for(sim: Simulator, account: Account, sink_sid: str, request: Request) -> Sink:
    sink = sim.store.sinks.get(sink_sid)
    if sink is None or sink.account_sid != account.sid:
        raise not_found(request.url.path)
    return sink


def _subscription_for(
    sim: Simulator, account: Account, subscription_sid: str, request: Request
) -> Subscription:
    subscription = sim.store.subscriptions.get(subscription_sid)
    if subscription is None or subscription.account_sid != account.sid:
        raise not_found(request.url.path)
    return subscription


def parse_subscribed_type(raw: str) -> tuple[str, int]:
    """A ``Types`` value: ``{"type": ..., "schema_version": N}`` as JSON, or a bare type name."""
    text = raw.strip()
    event_type: Any = text
    version: Any = None
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise bad_request(20001, f"Invalid Types value: {raw!r}") from None
        if not isinstance(parsed, dict):
            raise bad_request(20001, f"Invalid Types value: {raw!r}")
        event_type = parsed.get("type")
        version = parsed.get("schema_version")
    if not isinstance(event_type, str) or not event_type.startswith("com.twilio."):
        raise bad_request(20001, f"Unknown event type in Types: {raw!r}")
    if version is None:
        version = SCHEMA_VERSIONS.get(event_type, DEFAULT_SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad_request(20001, f"Invalid schema_version in Types: {raw!r}")
    return event_type, version


# Sinks


@router.post("/Sinks", status_code=201)
async def create_sink(request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    form = await request.form()
    description = _required(form, "Description")
    raw_configuration = _required(form, "SinkConfiguration")
    sink_type = _required(form, "SinkType")
    if sink_type != "webhook":
        raise bad_request(20001, f"Unsupported SinkType {sink_type!r}: only webhook is simulated")
    try:
        configuration = json.loads(raw_configuration)
    except json.JSONDecodeError:
        raise bad_request(20001, "SinkConfiguration must be a JSON object") from None
    if not isinstance(configuration, dict):
        raise bad_request(20001, "SinkConfiguration must be a JSON object")
    destination = configuration.get("destination")
    if not isinstance(destination, str) or urlsplit(destination).scheme not in ("http", "https"):
        raise bad_request(20001, "SinkConfiguration.destination must be an http(s) URL")
    method = str(configuration.get("method", "POST")).upper()
    if method not in ("POST", "GET"):
        raise bad_request(20001, "SinkConfiguration.method must be POST or GET")
    batch_events = configuration.get("batch_events", True)
    if isinstance(batch_events, str):
        batch_events = batch_events.lower() == "true"
    sink = sim.store.add_sink(
        account.sid,
        destination=destination,
        description=description,
        method=method,
        batch_events=bool(batch_events),
    )
    return sink_json(sink, _base_url(request))


@router.get("/Sinks")
async def list_sinks(request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    page = paginate(
        sim.store.sinks_for(account.sid),
        parse_page_request(request.query_params, sim.config.max_page_size),
        lambda s: s.sid,
    )
    base = _base_url(request)
    return {
        "sinks": [sink_json(sink, base) for sink in page.items],
        "meta": _meta(request, "sinks", [], page),
    }


@router.get("/Sinks/{sink_sid}")
async def fetch_sink(sink_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    return sink_json(_sink_for(sim, account, sink_sid, request), _base_url(request))


@router.post("/Sinks/{sink_sid}")
async def update_sink(sink_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    sink = _sink_for(sim, account, sink_sid, request)
    form = await request.form()
    sink.description = _required(form, "Description")
    return sink_json(sink, _base_url(request))


@router.delete("/Sinks/{sink_sid}")
async def delete_sink(sink_sid: str, request: Request) -> Response:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    sim.store.delete_sink(_sink_for(sim, account, sink_sid, request))
    return Response(status_code=204)


@router.post("/Sinks/{sink_sid}/Test", status_code=201)
async def test_sink(sink_sid: str, request: Request) -> dict[str, Any]:
    """Send the sink test event in the background, whatever the sink subscribes to."""
    sim = simulator(request)
    account = authenticate(sim.store, request)
    sink = _sink_for(sim, account, sink_sid, request)
    sink.last_test_id = new_test_id()
    sim.deliverer.spawn(
        sim.deliverer.deliver_events(
            account.sid,
            [sink_test_event(account.sid, sink.last_test_id)],
            DeliveryOptions(batch=True),
            sinks=[sink],
            require_subscription=False,
        )
    )
    return {"result": "submitted"}


@router.post("/Sinks/{sink_sid}/Validate", status_code=201)
async def validate_sink(sink_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    sink = _sink_for(sim, account, sink_sid, request)
    test_id = _required(await request.form(), "TestId")
    if sink.last_test_id is None or test_id != sink.last_test_id:
        raise bad_request(20001, f"TestId {test_id} does not match the sink's last test event")
    sink.status = "active"
    return {"result": "valid"}


# Subscriptions


@router.post("/Subscriptions", status_code=201)
async def create_subscription(request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    form = await request.form()
    description = _required(form, "Description")
    sink_sid = _required(form, "SinkSid")
    raw_types = [value for value in form.getlist("Types") if isinstance(value, str) and value]
    if not raw_types:
        raise bad_request(20001, "Missing required parameter Types in the post body")
    sink = sim.store.sinks.get(sink_sid)
    if sink is None or sink.account_sid != account.sid:
        raise bad_request(20001, f"Sink {sink_sid} was not found")
    types = dict(parse_subscribed_type(raw) for raw in raw_types)
    subscription = sim.store.add_subscription(account.sid, sink.sid, description, types)
    return subscription_json(subscription, _base_url(request))


@router.get("/Subscriptions")
async def list_subscriptions(request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    sink_sid = request.query_params.get("SinkSid") or None
    page = paginate(
        sim.store.subscriptions_for(account.sid, sink_sid),
        parse_page_request(request.query_params, sim.config.max_page_size),
        lambda s: s.sid,
    )
    base = _base_url(request)
    filters = [("SinkSid", sink_sid)] if sink_sid else []
    return {
        "subscriptions": [subscription_json(s, base) for s in page.items],
        "meta": _meta(request, "subscriptions", filters, page),
    }


@router.get("/Subscriptions/{subscription_sid}")
async def fetch_subscription(subscription_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    subscription = _subscription_for(sim, account, subscription_sid, request)
    return subscription_json(subscription, _base_url(request))


@router.delete("/Subscriptions/{subscription_sid}")
async def delete_subscription(subscription_sid: str, request: Request) -> Response:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    subscription = _subscription_for(sim, account, subscription_sid, request)
    del sim.store.subscriptions[subscription.sid]
    return Response(status_code=204)


@router.get("/Subscriptions/{subscription_sid}/SubscribedEvents")
async def list_subscribed_events(subscription_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate(sim.store, request)
    subscription = _subscription_for(sim, account, subscription_sid, request)
    base = _base_url(request)
    # A subscription names a handful of types, so they always fit on one page.
    entries = sorted(subscription.types.items())
    size = parse_page_request(request.query_params, sim.config.max_page_size).page_size
    return {
        "types": [subscribed_event_json(subscription, t, v, base) for t, v in entries],
        "meta": {
            "page": 0,
            "page_size": max(size, len(entries)),
            "first_page_url": f"{base}{request.url.path}?PageSize={size}&Page=0",
            "previous_page_url": None,
            "url": f"{base}{request.url.path}?PageSize={size}&Page=0",
            "next_page_url": None,
            "key": "types",
        },
    }


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown_resource(rest: str, request: Request) -> Response:
    authenticate(simulator(request).store, request)
    raise not_found(request.url.path)
