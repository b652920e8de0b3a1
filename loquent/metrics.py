"""Prometheus metrics, served at /metrics.

Under ``loquent serve --workers N`` each worker is its own process with its own counters;
``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start,
every process writes its samples there, and /metrics adds them up (prometheus_client's
multiprocess mode), so one scrape sees the whole server whichever worker answers it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

EVENTS_RECEIVED = Counter(
    "loquent_twilio_events_total", "Event Streams events processed", ["type", "outcome"]
)
WEBHOOK_REJECTED = Counter(
    "loquent_twilio_webhook_rejected_total", "Event Streams deliveries refused", ["reason"]
)
WEBHOOK_SECONDS = Histogram(
    "loquent_twilio_webhook_seconds", "Time to answer an Event Streams delivery"
)
ENRICHMENT = Counter(
    "loquent_enrichment_total", "Body enrichment jobs finished, by outcome", ["outcome"]
)
SSE_STREAMS = Counter("loquent_sse_streams_total", "SSE streams opened")

# Conventional HTTP server metrics, labelled with the route template (``/api/contacts/{id}``),
# never the raw path: one series per route, whatever ids clients send.
HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the body; streams last long)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 300.0),
)
# One sample per live web process (a ``pid`` label under multiprocess mode): how many
# processes the scrape covers, and when each started.
PROCESS_STARTED = Gauge(
    "loquent_process_start_time_seconds",
    "When this web process started serving (Unix time)",
    multiprocess_mode="liveall",
)
NOTIFIER_DROPPED = Counter(
    "loquent_notifier_dropped_total", "Cross-process wake-ups dropped (Redis slow or down)"
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> bytes:
    """The text exposition: this process's registry, or every process's under multiprocess."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def mark_process_dead(pid: int) -> None:
    """Let live gauges of an exited worker go; its counters keep counting in the totals."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


SSE_SUBSCRIBERS = Gauge(
    "loquent_sse_subscribers",
    "SSE streams following the live feed in this process",
    multiprocess_mode="livesum",
)
SSE_DROPPED = Counter(
    "loquent_sse_dropped_total", "SSE streams ended because the client fell too far behind"
)
EVENT_LOG_READS = Counter(
    "loquent_event_log_reads_total",
    "Event-log reads for SSE: live (once per organization per wake-up), recheck (rows waited"
    " for an older transaction) or replay (per stream joining with an old cursor)",
    ["kind"],
)
