"""``loquent simulate ...``: run the simulator and play external traffic against it."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from loquent.simulator.client import DEFAULT_URL, URL_ENV, SimulatorClient, SimulatorError
from loquent.simulator.config import SimulatorConfig

simulate_app = typer.Typer(
    help="The bundled Twilio simulator: serve it, or play SMS traffic against a running one.",
    no_args_is_help=True,
)

SimUrl = Annotated[
    str,
    typer.Option(
        "--sim-url", envvar=URL_ENV, help="Base URL of a running simulator.", show_default=True
    ),
]
Account = Annotated[
    str | None,
    typer.Option("--account", help="Account SID; default: the simulator's only/first account."),
]
From = Annotated[str, typer.Option("--from", help="Sender, E.164.")]
To = Annotated[str, typer.Option("--to", help="Recipient, E.164.")]
Body = Annotated[str, typer.Option("--body", help="Message text.")]
MediaUrl = Annotated[
    list[str] | None, typer.Option("--media-url", help="Attach media (repeatable).")
]


@simulate_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; keep it on loopback.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8899,
    media_base_url: Annotated[
        str | None,
        typer.Option(help="Where media redirects point (default: the simulator itself)."),
    ] = None,
    allow_remote_control: Annotated[
        bool, typer.Option(help="Answer /_sim control requests from non-loopback clients.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the simulator (Twilio REST + Event Streams + /_sim control API)."""
    from loquent.servers import serve as serve_app
    from loquent.simulator.app import create_simulator_app

    config = SimulatorConfig(
        media_base_url=media_base_url, control_loopback_only=not allow_remote_control
    )
    serve_app(create_simulator_app(config), host=host, port=port, log_level=log_level)


def _play(command: str, sim_url: str, account: str | None, fields: dict[str, Any]) -> None:
    async def play() -> dict[str, Any]:
        client = SimulatorClient(sim_url)
        account_sid = account or await client.default_account()
        send = client.console_sms if command == "console" else client.inbound_sms
        return await send(account_sid, wait=True, **fields)

    try:
        result = asyncio.run(play())
    except SimulatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


@simulate_app.command("external-sms")
def external_sms(
    from_: From,
    to: To,
    body: Body,
    account: Account = None,
    media_url: MediaUrl = None,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Status events to deliver, in order (repeatable)."),
    ] = None,
    sim_url: SimUrl = DEFAULT_URL,
) -> None:
    """Send an SMS "from the Twilio Console": the app sees only its status events."""
    fields: dict[str, Any] = {"from": from_, "to": to, "body": body, "media_urls": media_url or []}
    if status:
        fields["statuses"] = status
    _play("console", sim_url, account, fields)


@simulate_app.command("inbound-sms")
def inbound_sms(
    from_: From,
    to: To,
    body: Body,
    account: Account = None,
    media_url: MediaUrl = None,
    sim_url: SimUrl = DEFAULT_URL,
) -> None:
    """Deliver an SMS from a phone to one of the account's numbers."""
    fields = {"from": from_, "to": to, "body": body, "media_urls": media_url or []}
    _play("inbound", sim_url, account, fields)


@simulate_app.command("accounts")
def accounts(sim_url: SimUrl = DEFAULT_URL) -> None:
    """List the simulator's accounts (with tokens, numbers and sinks)."""
    try:
        result = asyncio.run(SimulatorClient(sim_url).accounts())
    except SimulatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
