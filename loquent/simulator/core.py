"""The simulator's runtime: state, fault rules, logs and deliveries, and the flows that tie them.

Both the Twilio-shaped routes and the control routes act through this object, so "a message was
sent through the API" and "a message was sent from the Console" share one implementation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx

from loquent.simulator.config import SimulatorConfig
from loquent.simulator.delivery import Deliverer, DeliveryOptions, DeliveryRecord, Signer
from loquent.simulator.events import inbound_event, status_event
from loquent.simulator.faults import FaultBook
from loquent.simulator.media import synthesize
from loquent.simulator.representations import API_VERSION
from loquent.simulator.state import STATUS_RANK, Account, Message, SimStore, iso_millis, utcnow

logger = logging.getLogger(__name__)


def highest_status(statuses: Sequence[str]) -> str:
    """The furthest status of a set; the first one wins among equals."""
    return max(statuses, key=lambda status: STATUS_RANK.get(status, 0))


class Simulator:
    def __init__(
        self, config: SimulatorConfig | None = None, http_client: httpx.AsyncClient | None = None
    ) -> None:
        self._initial_config = replace(config or SimulatorConfig())
        self.config = replace(self._initial_config)
        self.store = SimStore()
        self.faults = FaultBook()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=self.config.log_limit)
        self.media_fetches: deque[dict[str, Any]] = deque(maxlen=self.config.log_limit)
        self.deliverer = Deliverer(self.store, lambda: self.config, http_client)
        # (account SID, To) -> (Twilio error code, message or None for Twilio's own): a
        # ``POST .../Messages.json`` to that number is refused as Twilio refuses it.
        self.send_rejections: dict[tuple[str, str], tuple[int, str | None]] = {}

    async def reset(self) -> None:
        """Forget everything, stop pending deliveries, and restore the startup configuration."""
        await self.deliverer.cancel_all()
        self.store.clear()
        self.faults.clear()
        self.request_log.clear()
        self.media_fetches.clear()
        self.send_rejections.clear()
        self.deliverer.records.clear()
        self.config = replace(self._initial_config)

    async def aclose(self) -> None:
        await self.deliverer.aclose()

    # Logs

    def log_request(
        self,
        *,
        method: str,
        path: str,
        query: str,
        auth_user: str | None,
        status: int,
        duration_ms: float,
        fault_id: int | None,
        cookies: Sequence[str] = (),
    ) -> None:
        self.request_log.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "auth_user": auth_user,
                "cookies": list(cookies),  # names of the cookies the client sent
                "status": status,
                "at": iso_millis(utcnow()),
                "duration_ms": round(duration_ms, 2),
                "fault_id": fault_id,
            }
        )

    def log_media_fetch(self, media_sid: str, *, had_authorization: bool, status: int) -> None:
        self.media_fetches.append(
            {
                "media_sid": media_sid,
                "had_authorization": had_authorization,
                "status": status,
                "at": iso_millis(utcnow()),
            }
        )

    # Messages

    def create_message(
        self,
        account: Account,
        *,
        from_: str,
        to: str,
        body: str,
        direction: str,
        status: str,
        media_urls: Sequence[str] = (),
        date_created: datetime | None = None,
        error_code: int | None = None,
        status_callback: str | None = None,
        messaging_service_sid: str | None = None,
    ) -> Message:
        message = self.store.add_message(
            account_sid=account.sid,
            from_=from_,
            to=to,
            body=body,
            direction=direction,
            status=status,
            date_created=date_created,
            error_code=error_code,
            status_callback=status_callback,
            messaging_service_sid=messaging_service_sid,
        )
        for url in media_urls:
            content_type, content = synthesize(url)
            size = self.config.media_size_bytes
            if size is not None and size > len(content):
                content += bytes(size - len(content))
            self.store.add_media(message, content_type, content, url)
        return message

    def events_for(
        self,
        message: Message,
        statuses: Sequence[str],
        *,
        error_code: int | None = None,
        include_body: bool = False,
    ) -> list[dict[str, Any]]:
        """One event per status, a millisecond apart so their times keep the given order."""
        start = utcnow()
        events = []
        for index, status in enumerate(statuses):
            at = start + timedelta(milliseconds=index)
            if status == "received":
                events.append(inbound_event(message, at=at))
            else:
                events.append(
                    status_event(
                        message, status, error_code=error_code, include_body=include_body, at=at
                    )
                )
        return events

    async def deliver(
        self,
        account_sid: str,
        events: Sequence[dict[str, Any]],
        options: DeliveryOptions,
        *,
        wait: bool,
    ) -> list[DeliveryRecord] | None:
        """Deliver now and return the records (``wait``), or in the background and return None."""
        work = self.deliverer.deliver_events(account_sid, events, options)
        if wait:
            return await work
        self.deliverer.spawn(work)
        return None

    def start_outbound_lifecycle(self, message: Message, *, skip: int = 0) -> None:
        """After ``POST .../Messages.json``: report the configured statuses in the background
        (all but the first ``skip``, already reported before the answer)."""
        self.deliverer.spawn(self._outbound_lifecycle(message, skip))

    async def report_before_answer(self, message: Message) -> int:
        """``early_status_events``: report the statuses up to ``sent`` now, each delivery
        answered by the sink, before the create call is answered — Event Streams can reach
        the receiver before Twilio's answer to the POST does. Returns how many were reported.
        """
        early = 0
        for status in self.config.outbound_statuses:
            if STATUS_RANK.get(status, 0) > STATUS_RANK["sent"]:
                break
            await self._report_status(message, status)
            early += 1
        return early

    async def _outbound_lifecycle(self, message: Message, skip: int) -> None:
        for status in list(self.config.outbound_statuses)[skip:]:
            await asyncio.sleep(self.config.outbound_status_delay_s)
            if self.store.messages.get(message.sid) is not message:
                return  # deleted meanwhile
            await self._report_status(message, status)

    async def _report_status(self, message: Message, status: str) -> None:
        message.apply_status(status)
        events = self.events_for(message, [status])
        await self.deliverer.deliver_events(message.account_sid, events)
        account = self.store.accounts.get(message.account_sid)
        if message.status_callback and account is not None:
            await self.deliverer.post_status_callback(
                account_sid=account.sid,
                url=message.status_callback,
                params=status_callback_params(message, status),
                signer=Signer.for_account(account),
            )


def status_callback_params(message: Message, status: str) -> dict[str, str]:
    params = {
        "AccountSid": message.account_sid,
        "ApiVersion": API_VERSION,
        "From": message.from_,
        "To": message.to,
        "MessageSid": message.sid,
        "SmsSid": message.sid,
        "MessageStatus": status,
        "SmsStatus": status,
    }
    if message.error_code is not None and status in ("undelivered", "failed"):
        params["ErrorCode"] = str(message.error_code)
    if message.messaging_service_sid:
        params["MessagingServiceSid"] = message.messaging_service_sid
    return params
