"""The OpenAPI document keeps its promises: operation ids, one error schema, no shapeless
answers, and the allowed values of every enum."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from loquent.app import create_app
from loquent.config import Settings
from loquent.errors import ErrorResponse
from tests.conftest import Stack

OPERATION_ID = re.compile(r"^[a-z]+(_[a-z]+)*_[a-z][a-z0-9_]*$")
TAGS = {"contacts", "messages", "realtime", "settings", "twilio account", "twilio history"}
TAGS |= {"twilio webhooks", "ops"}
ERROR_SCHEMAS = {"ErrorResponse", "SendErrorResponse"}
# Answers of a probe, not errors: a load balancer reads the status, a person the parts.
NOT_ERRORS = {("/readyz", "get", "503")}
ENUMS = {
    "MessageStatus": [
        "accepted",
        "scheduled",
        "queued",
        "sending",
        "sent",
        "delivered",
        "undelivered",
        "failed",
        "receiving",
        "received",
        "read",
        "canceled",
        "partially_delivered",
    ],
    "MessageSource": ["loquent", "external", "import"],
    "ContactSource": ["inbound_sms", "external_sms", "import", "manual"],
    "Direction": ["inbound", "outbound"],
    "BodyState": ["pending", "ready", "empty", "failed"],
    "Role": ["owner", "member"],
    "ImportKind": ["history", "catchup"],
    "ImportState": ["running", "finished", "failed"],
}
# Where each enum is used: (schema, property) → enum schema name.
ENUM_FIELDS = {
    ("MessageOut", "status"): "MessageStatus",
    ("MessageOut", "source"): "MessageSource",
    ("MessageOut", "direction"): "Direction",
    ("MessageOut", "body_state"): "BodyState",
    ("ContactListItem", "source"): "ContactSource",
    ("SettingsOut", "role"): "Role",
    ("ImportOut", "kind"): "ImportKind",
    ("ImportOut", "state"): "ImportState",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("openapi") / "unused.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{db}", secret_key="document-test")
    # The served document, as clients download it.
    with TestClient(create_app(settings)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.removeprefix("#/components/schemas/") if ref else None


def test_every_operation_id_is_tag_and_function_name(document: dict[str, Any]) -> None:
    seen: set[str] = set()
    for path, method, operation in _operations(document):
        op_id = operation.get("operationId")
        assert op_id, (path, method)
        assert OPERATION_ID.fullmatch(op_id), op_id
        tag = operation["tags"][0]
        assert tag in TAGS, (path, tag)
        assert op_id.startswith(tag.replace(" ", "_") + "_"), (op_id, tag)
        # Never FastAPI's generated ids, which carry the path and the method.
        assert not op_id.endswith(f"_{method}"), op_id
        assert op_id not in seen
        seen.add(op_id)
    assert {"contacts_list_contacts", "messages_send_message", "realtime_events"} <= seen
    assert "twilio_webhooks_receive_events" in seen


def test_every_error_answer_is_the_error_schema(document: dict[str, Any]) -> None:
    checked = 0
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")) or (path, method, status) in NOT_ERRORS:
                continue
            content = response.get("content", {})
            assert list(content) == ["application/json"], (path, method, status, content)
            schema = content["application/json"]["schema"]
            assert _ref_name(schema) in ERROR_SCHEMAS, (path, method, status, schema)
            error = _resolve(document, _resolve(document, schema)["properties"]["error"])
            assert {"code", "message"} <= set(error["required"]), (path, status)
            checked += 1
    assert checked > 50
    schemas = document["components"]["schemas"]
    # FastAPI's own {"detail": [...]} is gone from the document, not only unreferenced.
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas


def test_routes_document_their_real_error_answers(document: dict[str, Any]) -> None:
    paths = document["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    for path, method, operation in _operations(document):
        if operation.get("security"):  # authenticated: 401 without a credential
            assert "401" in statuses(path, method), path
            if method != "get":  # a session request without its CSRF token
                assert "403" in statuses(path, method), path
        has_input = operation.get("parameters") or operation.get("requestBody")
        if path.startswith("/api") and has_input:
            assert "422" in statuses(path, method), path
    for path in ("/twilio/events", "/twilio/status", "/twilio/sms"):
        assert {"400", "403", "413", "503"} <= statuses(path, "post"), path
        assert "security" not in paths[path]["post"]  # signed by Twilio instead
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerToken"]["description"],
    }
    assert schemes["sessionCookie"]["in"] == "cookie"


def test_no_answer_is_a_shapeless_object(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            for media_type, body in response.get("content", {}).items():
                schema = body.get("schema")
                assert schema, (path, method, status, media_type)
                if media_type != "application/json":
                    continue
                resolved = _resolve(document, schema)
                assert resolved.get("properties"), (path, method, status)
                assert resolved.get("type") == "object", (path, method, status)
    # Nor is any property of any schema: `last_message` is a message, not a dict.
    for name, schema in document["components"]["schemas"].items():
        for prop, definition in schema.get("properties", {}).items():
            for option in definition.get("anyOf", [definition]):
                if option.get("type") == "object":
                    assert option.get("properties") or option.get("additionalProperties"), (
                        name,
                        prop,
                    )
                assert option != {}, (name, prop)  # Any
    item = document["components"]["schemas"]["ContactListItem"]["properties"]["last_message"]
    assert {"$ref": "#/components/schemas/MessageOut"} in item["anyOf"]


def test_enums_list_exactly_the_allowed_values(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, values in ENUMS.items():
        assert schemas[name]["type"] == "string", name
        assert schemas[name]["enum"] == values, name
    for (model, prop), enum_name in ENUM_FIELDS.items():
        definition = schemas[model]["properties"][prop]
        refs = [_ref_name(option) for option in definition.get("anyOf", [definition])]
        assert enum_name in refs, (model, prop, definition)


def test_content_types(document: dict[str, Any]) -> None:
    paths = document["paths"]

    def ok(path: str, method: str = "get") -> dict[str, Any]:
        responses = paths[path][method]["responses"]
        return responses.get("200") or responses["201"]

    assert list(ok("/api/events")["content"]) == ["text/event-stream"]
    assert list(ok("/twilio/sms", "post")["content"]) == ["text/xml"]
    assert list(ok("/metrics")["content"]) == ["text/plain"]
    media = ok("/api/messages/{message_id}/media/{media_sid}")["content"]
    assert "application/json" not in media
    assert set(media) == {"image/*", "audio/*", "video/*", "text/*", "application/*"}
    for path in ("/twilio/status", "/twilio/sms"):
        body = paths[path]["post"]["requestBody"]["content"]
        assert list(body) == ["application/x-www-form-urlencoded"]
    assert list(paths["/twilio/events"]["post"]["requestBody"]["content"]) == ["application/json"]


async def test_runtime_errors_match_the_document(stack: Stack) -> None:
    """What a client gets for a refused request is the documented ErrorResponse."""
    bearer = {"Authorization": f"Bearer {stack.org.api_token}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        answers = {
            "query": await http.get("/api/contacts", params={"limit": "0"}, headers=bearer),
            "path": await http.get("/api/contacts/x/messages", headers=bearer),
            "body": await http.post(
                "/api/messages/send", json={"contact_id": "one"}, headers=bearer
            ),
            "json": await http.post(
                "/api/twilio/connect",
                content=b"{not json",
                headers={**bearer, "Content-Type": "application/json"},
            ),
            "unauthenticated": await http.get("/api/contacts"),
            "cursor": await http.get("/api/contacts", params={"cursor": "AAAA"}, headers=bearer),
            # Read as latin-1 this is "²", a digit to str.isdigit that int() refuses.
            "last_event_id": await http.get(
                "/api/events", headers={**bearer, "Last-Event-ID": b"\xb2"}
            ),
        }
    for name, response in answers.items():
        status = {"unauthenticated": 401, "cursor": 400, "last_event_id": 400}.get(name, 422)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/json", name
        body = response.json()
        assert set(body) == {"error"}, (name, body)  # never FastAPI's {"detail": ...}
        parsed = ErrorResponse.model_validate(body)
        if status == 422:
            assert parsed.error.code == "invalid_request"
            assert parsed.error.details, name
    limit = ErrorResponse.model_validate(answers["query"].json()).error
    assert limit.details is not None
    assert limit.details[0].loc == ["query", "limit"]
    assert limit.message.startswith("limit:")
