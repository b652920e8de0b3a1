"""Knobs of the simulator that tests and the demo may want to turn."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimulatorConfig:
    # Where media redirects point. Real Twilio redirects media downloads to another host; point
    # this at a different host name for the same server (``http://localhost:PORT`` while the API
    # is reached as ``http://127.0.0.1:PORT``) to check that credentials are not forwarded.
    # ``None`` means the simulator's own base URL as seen by the request.
    media_base_url: str | None = None
    # Large and slow media, to check that the app relays files without holding them whole:
    # new media are padded with zero bytes to this size (``None``: the small made-up files),
    # and the media host sends them in chunks, pausing between chunks, with or without a
    # Content-Length (some CDNs answer chunked).
    media_size_bytes: int | None = None
    media_chunk_delay_s: float = 0.0
    media_content_length: bool = True

    # Status events emitted for a message created through ``POST .../Messages.json``.
    outbound_statuses: tuple[str, ...] = ("queued", "sent", "delivered")
    outbound_status_delay_s: float = 0.2
    # Report the statuses up to ``sent`` to the sinks (and wait for their answers) before
    # answering the create call: the order Twilio can produce when Event Streams is faster
    # than the API response ("the send race").
    early_status_events: bool = False

    # Webhook delivery: Twilio waits at most 5 s for an answer and retries 429/5xx and connection
    # errors for hours; here the retries are few and quick so tests stay fast.
    delivery_timeout_s: float = 5.0
    retry_backoff_s: tuple[float, ...] = field(default=(0.2, 0.5, 1.0))

    # Largest PageSize a list answers with. Twilio's cap is 1000; lower it to make tests follow
    # several pages without seeding thousands of resources.
    max_page_size: int = 1000

    # The control API has no authentication, so by default it answers loopback clients only.
    control_loopback_only: bool = True

    # Upper bound on the request and delivery logs, so long benchmark runs stay bounded.
    log_limit: int = 10_000
