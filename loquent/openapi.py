"""The OpenAPI document's conventions, shared by every router.

Operation ids are ``<tag>_<function name>`` (``contacts_list_contacts``): stable across
path changes, readable in generated clients. Patterns that describe text use the same
whitespace as Python's ``str.isspace`` so the schema refuses exactly what the code refuses.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

# What ``str.isspace`` calls whitespace, as the body of a regular-expression class that
# JSON Schema (ECMA 262), pydantic and Python read alike.
WHITESPACE = r"\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{WHITESPACE}]"  # somewhere in the text: one character that is not whitespace
NO_SPACE_OR_CONTROL = f"^[^{WHITESPACE}\\x00-\\x1f]+$"  # and no control character

# The largest id a path, query or body may name: the largest integer every JSON client
# (a browser's Number among them) reads exactly, so the document's bounds mean the same
# to the client as to the server.
MAX_ID = 2**53 - 1

# What the webhook parsers accept, as (a subset of) JSON Schema: the bodies are read raw for
# their signatures, so FastAPI does not parse them; these describe them in the document.
ACCOUNT_SID = "^AC[0-9a-fA-F]{32}$"
MESSAGE_SID = "^(SM|MM)[0-9a-fA-F]{32}$"
ADDRESS = {
    "type": "string",
    "pattern": "^[+]?[0-9A-Za-z]{1,15}$",
    "description": "E.164 number, short code or alphanumeric sender id",
}

_NOT_WORD = re.compile(r"\W+")


def operation_id(route: APIRoute) -> str:
    """``<first tag>_<function name>``, the tag in snake case."""
    tag = str(route.tags[0]) if route.tags else "default"
    return f"{_NOT_WORD.sub('_', tag).strip('_').lower()}_{route.name}"
