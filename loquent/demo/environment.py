"""The demo's configuration and database: environment variables pointing the app at the
simulator, a secret key of its own kept between runs, and a migrated (SQLite) database."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from loquent.demo.console import say

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.demo/loquent.db"
DEMO_DATA_DIR = Path(".demo")
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name, not a secret


def demo_secret_key(data_dir: Path) -> str:
    """The demo's own LOQUENT_SECRET_KEY: made once, kept in its data directory (owner-only),
    and reused on later runs, so the tokens it stored stay readable."""
    path = data_dir / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def configure_environment(app_url: str, sim_url: str) -> None:
    """The app reaches "Twilio" only through its configurable base URLs: point them here."""
    os.environ.setdefault("LOQUENT_DATABASE_URL", DEFAULT_DATABASE_URL)
    if not os.environ.get("LOQUENT_SECRET_KEY"):
        sqlite_file = sqlite_path(os.environ["LOQUENT_DATABASE_URL"])
        data_dir = sqlite_file.parent if sqlite_file is not None else DEMO_DATA_DIR
        os.environ["LOQUENT_SECRET_KEY"] = demo_secret_key(data_dir)
    os.environ["LOQUENT_PUBLIC_URL"] = app_url
    os.environ["LOQUENT_TWILIO_API_BASE"] = sim_url
    os.environ["LOQUENT_TWILIO_EVENTS_API_BASE"] = sim_url
    os.environ.setdefault("LOQUENT_LOG_LEVEL", "WARNING")  # keep the demo's output readable
    os.environ["LOQUENT_SIMULATOR_URL"] = sim_url  # for `loquent simulate` in this process


def sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite"):
        return None
    _, _, path = database_url.partition(":///")
    return Path(path) if path and path != ":memory:" else None


def prepare_database(database_url: str, *, fresh: bool) -> None:
    from loquent.migrate import upgrade

    path = sqlite_path(database_url)
    if path is not None:
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    elif fresh:
        say("note: --fresh only resets SQLite databases; keeping the existing data")
    upgrade(database_url)
