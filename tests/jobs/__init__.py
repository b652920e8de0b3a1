"""Tests for the job queue, the worker, body enrichment and the Twilio REST client."""
