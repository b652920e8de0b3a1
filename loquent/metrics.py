"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Gauge, Histogram

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
SSE_SUBSCRIBERS = Gauge(
    "loquent_sse_subscribers", "SSE streams following the live feed in this process"
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
