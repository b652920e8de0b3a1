"""Import every model so metadata (Alembic, tests) sees the whole schema."""

from loquent.contacts.models import Contact, ContactPhone
from loquent.messaging.models import Message, MessageMedia
from loquent.orgs.models import ApiToken, Member, Organization, PhoneNumber, User, UserSession
from loquent.realtime.models import EventLogEntry, EventLogWatermark
from loquent.twilio.import_models import MessageImport

__all__ = [
    "ApiToken",
    "Contact",
    "ContactPhone",
    "EventLogEntry",
    "EventLogWatermark",
    "Member",
    "Message",
    "MessageImport",
    "MessageMedia",
    "Organization",
    "PhoneNumber",
    "User",
    "UserSession",
]
