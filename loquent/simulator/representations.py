"""Resources rendered with Twilio's field names, as the real APIs return them."""

from __future__ import annotations

from typing import Any

from loquent.simulator.state import (
    Account,
    Media,
    Message,
    PhoneNumber,
    Sink,
    Subscription,
    iso_seconds,
    rfc2822,
)

API_VERSION = "2010-04-01"


def account_path(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}"


def message_path(account_sid: str, message_sid: str) -> str:
    return f"{account_path(account_sid)}/Messages/{message_sid}"


def account_json(account: Account) -> dict[str, Any]:
    """The Account resource. The auth token is deliberately never part of it."""
    base = account_path(account.sid)
    return {
        "sid": account.sid,
        "owner_account_sid": account.sid,
        "friendly_name": account.friendly_name,
        "status": account.status,
        "type": "Full",
        "date_created": rfc2822(account.date_created),
        "date_updated": rfc2822(account.date_updated),
        "uri": f"{base}.json",
        "subresource_uris": {
            "messages": f"{base}/Messages.json",
            "incoming_phone_numbers": f"{base}/IncomingPhoneNumbers.json",
        },
    }


def message_json(message: Message) -> dict[str, Any]:
    base = message_path(message.account_sid, message.sid)
    return {
        "sid": message.sid,
        "account_sid": message.account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": rfc2822(message.date_created),
        "date_sent": rfc2822(message.date_sent),
        "date_updated": rfc2822(message.date_updated),
        "direction": message.direction,
        "error_code": message.error_code,
        "error_message": message.error_message,
        "from": message.from_,
        "to": message.to,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": str(len(message.media)),
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "status": message.status,
        "subresource_uris": {"media": f"{base}/Media.json"},
        "uri": f"{base}.json",
    }


def media_json(media: Media) -> dict[str, Any]:
    return {
        "sid": media.sid,
        "account_sid": media.account_sid,
        "parent_sid": media.parent_sid,
        "content_type": media.content_type,
        "date_created": rfc2822(media.date_created),
        "date_updated": rfc2822(media.date_created),
        "uri": f"{message_path(media.account_sid, media.parent_sid)}/Media/{media.sid}.json",
    }


def phone_number_json(number: PhoneNumber) -> dict[str, Any]:
    return {
        "sid": number.sid,
        "account_sid": number.account_sid,
        "phone_number": number.phone_number,
        "friendly_name": number.friendly_name,
        "date_created": rfc2822(number.date_created),
        "date_updated": rfc2822(number.date_updated),
        "capabilities": {"sms": True, "mms": True, "voice": True, "fax": False},
        "status": "in-use",
        "api_version": API_VERSION,
        "uri": f"{account_path(number.account_sid)}/IncomingPhoneNumbers/{number.sid}.json",
    }


def sink_json(sink: Sink, base_url: str) -> dict[str, Any]:
    url = f"{base_url}/v1/Sinks/{sink.sid}"
    # Twilio's Sink resource names no account (unlike a Subscription).
    return {
        "sid": sink.sid,
        "description": sink.description,
        "sink_configuration": {
            "destination": sink.destination,
            "method": sink.method,
            "batch_events": sink.batch_events,
        },
        "sink_type": sink.sink_type,
        "status": sink.status,
        "date_created": iso_seconds(sink.date_created),
        "date_updated": iso_seconds(sink.date_updated),
        "url": url,
        "links": {"sink_test": f"{url}/Test", "sink_validate": f"{url}/Validate"},
    }


def subscription_json(subscription: Subscription, base_url: str) -> dict[str, Any]:
    url = f"{base_url}/v1/Subscriptions/{subscription.sid}"
    return {
        "sid": subscription.sid,
        "account_sid": subscription.account_sid,
        "description": subscription.description,
        "sink_sid": subscription.sink_sid,
        "receive_events_from_subaccounts": False,
        "date_created": iso_seconds(subscription.date_created),
        "date_updated": iso_seconds(subscription.date_updated),
        "url": url,
        "links": {"subscribed_events": f"{url}/SubscribedEvents"},
    }


def subscribed_event_json(
    subscription: Subscription, event_type: str, schema_version: int, base_url: str
) -> dict[str, Any]:
    return {
        "account_sid": subscription.account_sid,
        "type": event_type,
        "schema_version": schema_version,
        "subscription_sid": subscription.sid,
        "url": f"{base_url}/v1/Subscriptions/{subscription.sid}/SubscribedEvents/{event_type}",
    }
