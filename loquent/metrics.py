"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Histogram

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
