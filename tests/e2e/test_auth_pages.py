"""Login, logout and page access over real HTTP: redirects, 401s, and no 500 for bad input."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _client(stack: Any) -> httpx.Client:
    return httpx.Client(base_url=stack.app_url, timeout=30, follow_redirects=False)


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the login form carries no token"
    return match.group(1)


def _login(client: httpx.Client, email: str, password: str) -> httpx.Response:
    token = _form_token(client.get("/login").text)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


@pytest.mark.parametrize(
    ("path", "next_path"),
    [
        ("/messaging", None),
        ("/messaging/1", "/messaging/1"),
        ("/messaging/not-a-number", "/messaging/not-a-number"),
        ("/settings", "/settings"),
    ],
)
def test_pages_redirect_to_login(stack, path: str, next_path: str | None) -> None:
    with _client(stack) as client:
        response = client.get(path)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query).get("next") == ([next_path] if next_path else None)


def test_home_redirects_to_the_inbox(stack) -> None:
    with _client(stack) as client:
        response = client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == "/messaging"


@pytest.mark.parametrize(
    "path", ["/api/contacts", "/api/events", "/api/settings", "/api/contacts/1/messages"]
)
def test_api_and_stream_answer_401(stack, path: str) -> None:
    with _client(stack) as client:
        response = client.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "evil",
    [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "/login",
    ],
)
def test_next_only_returns_to_this_site(stack, evil: str) -> None:
    with _client(stack) as client:
        page = client.get("/login", params={"next": evil})
        assert page.status_code == 200
        assert 'name="next" value="/messaging"' in page.text
        token = _form_token(page.text)
        seeded = stack.orgs["acme"]
        response = client.post(
            "/login",
            data={
                "email": seeded.email,
                "password": stack.password,
                "csrf_token": token,
                "next": evil,
            },
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/messaging"


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(stack) -> None:
    seeded = stack.orgs["acme"]
    with _client(stack) as client:
        page = client.get("/login", params={"next": "/settings"})
        response = client.post(
            "/login",
            data={
                "email": seeded.email.upper(),
                "password": stack.password,
                "csrf_token": _form_token(page.text),
                "next": "/settings",
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/settings"
        cookie = response.headers["set-cookie"].lower()
        assert "loquent_session=" in cookie
        assert "httponly" in cookie
        assert "samesite=lax" in cookie

        settings = client.get("/settings")
        assert settings.status_code == 200
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', settings.text)
        assert csrf, "pages carry the session's CSRF token for scripts"
        raw_session = client.cookies["loquent_session"]

        # Logging out needs the CSRF token: a cross-site form cannot sign anyone out.
        refused = client.post("/logout", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        assert client.get("/api/contacts").status_code == 200

        done = client.post("/logout", data={"csrf_token": csrf.group(1)})
        assert done.status_code == 303
        assert done.headers["location"] == "/login"

    # The server-side session is gone: replaying the old cookie does not work.
    with httpx.Client(base_url=stack.app_url, cookies={"loquent_session": raw_session}) as replay:
        assert replay.get("/api/contacts").status_code == 401
        assert replay.get("/messaging", follow_redirects=False).status_code == 303


def _bad_login_cases(token: str, email: str) -> list[tuple[str, dict[str, object], int]]:
    form = "application/x-www-form-urlencoded"
    return [
        ("no fields", {"data": {"csrf_token": token}}, 400),
        ("no password", {"data": {"csrf_token": token, "email": email}}, 400),
        ("blank email", {"data": {"csrf_token": token, "email": "  ", "password": "x"}}, 400),
        ("not an email", {"data": {"csrf_token": token, "email": "nobody", "password": "x"}}, 400),
        (
            "huge email",
            {"data": {"csrf_token": token, "email": "a" * 5000 + "@x.test", "password": "x"}},
            400,
        ),
        (
            "huge password",
            {"data": {"csrf_token": token, "email": email, "password": "p" * 5000}},
            400,
        ),
        (
            "huge body",
            {"content": b"email=" + b"a" * 200_000, "headers": {"content-type": form}},
            400,
        ),
        (
            "repeated field",
            {
                "content": f"csrf_token={token}&email=a@x.test&email=b@x.test&password=x".encode(),
                "headers": {"content-type": form},
            },
            400,
        ),
        (
            "not UTF-8",
            {"content": b"email=\xff\xfe&password=x", "headers": {"content-type": form}},
            400,
        ),
        ("JSON body", {"json": {"email": email, "password": "x"}}, 400),
        ("multipart body", {"files": {"email": ("e.txt", b"x")}}, 400),
        ("no form token", {"data": {"email": email, "password": "whatever"}}, 400),
        (
            "forged form token",
            {"data": {"csrf_token": "forged", "email": email, "password": "whatever"}},
            400,
        ),
        (
            "wrong password",
            {"data": {"csrf_token": token, "email": email, "password": "not the password"}},
            401,
        ),
        (
            "unknown user",
            {"data": {"csrf_token": token, "email": "ghost@nowhere.test", "password": "whatever"}},
            401,
        ),
    ]


def test_bad_login_input_gets_the_form_back_never_a_500(stack) -> None:
    email = stack.orgs["acme"].email
    with _client(stack) as client:
        token = _form_token(client.get("/login").text)
        for name, request, expected in _bad_login_cases(token, email):
            response = client.post("/login", **request)  # type: ignore[arg-type]
            assert response.status_code == expected, f"{name}: {response.status_code}"
            assert 'id="login-error"' in response.text, f"{name}: no message shown"
            assert 'id="login-form"' in response.text, f"{name}: no form to try again"
            assert "loquent_session" not in response.headers.get("set-cookie", ""), name


def test_unknown_contact_is_a_404_page(stack) -> None:
    with _client(stack) as client:
        assert _login(client, stack.orgs["globex"].email, stack.password).status_code == 303
        for path in (
            "/messaging/999999",
            "/messaging/abc",
            "/messaging/-1",
            "/messaging/99999999999999999999999",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "Conversation not found" in response.text


def test_typing_logout_asks_before_signing_out(stack) -> None:
    with _client(stack) as client:
        assert client.get("/logout").headers["location"] == "/login"
        assert _login(client, stack.orgs["acme"].email, stack.password).status_code == 303
        page = client.get("/logout")
        assert page.status_code == 200
        assert client.get("/api/contacts").status_code == 200, "a GET must not sign out"
        done = client.post("/logout", data={"csrf_token": _form_token(page.text)})
        assert done.status_code == 303
        assert client.get("/api/contacts").status_code == 401
