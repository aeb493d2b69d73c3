"""The WebSocket protocol of `/ws` as an AsyncAPI 3.0 document, built from the models.

`docs/asyncapi.json` is this document (`python -m halobestie.api.asyncapi >
docs/asyncapi.json`); tests/api/test_asyncapi.py fails when the two differ, so the file
follows the models. Frames are `{"type": ..., "seq": n, "data": {...}}` for recorded
events (`seq`: the user's event number, SPEC §6) and `{"type": ..., "data": {...}}` for
the others (RECORDED tells which); api/ws.py tells the protocol (handshake, `since`,
close codes), realtime.md the guarantees.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from ..chat.models import Message
from ..console.models import Overview
from .models import ErrorBody, Offer, Role, SessionOut


class Ready(BaseModel):
    user_id: str
    role: Role
    last_seq: int | None = Field(
        description="the user's last event number when the socket opened (0 before the"
        " first; null only while Postgres is unreachable and no since was given)"
    )


class ResyncRequired(BaseModel):
    last_seq: int = Field(
        description="events after since are no longer kept: refetch the state over REST;"
        " the stream continues after this seq"
    )


class PairingTaken(BaseModel):
    request_id: str = Field(description="another mitra accepted it: drop the offer")


class PairingExpired(BaseModel):
    request_id: str
    reason: str = Field(description="expired (nobody accepted in time) or cancelled")


class SessionEndingSoon(BaseModel):
    session_id: str
    ends_at: str
    remaining_seconds: int


class MessageCreated(BaseModel):
    session_id: str
    message: Message


class MessageRead(BaseModel):
    session_id: str
    user_id: str = Field(description="who read")
    seq: int = Field(description="every message up to this seq is read")


class Typing(BaseModel):
    session_id: str
    user_id: str


class Empty(BaseModel):
    pass


class TypingRequest(BaseModel):
    session_id: str = Field(description="an active session of which the sender is a party")


# type -> (data model, who gets it)
SERVER_EVENTS: dict[str, tuple[type[BaseModel], str]] = {
    "ready": (Ready, "first frame: then the replay after since, if given, then live"),
    "resync_required": (ResyncRequired, "since is older than what is kept (or beyond it)"),
    "pong": (Empty, "the answer to ping"),
    "error": (ErrorBody, "a client frame was not understood (error: invalid_message)"),
    "pairing.offer": (Offer, "to each mitra offered a pairing request"),
    "pairing.taken": (PairingTaken, "to the other offered mitras once one accepted"),
    "pairing.expired": (PairingExpired, "to the customer and offered mitras"),
    "session.updated": (SessionOut, "to both parties on every session transition"),
    "session.ending_soon": (SessionEndingSoon, "to both parties, SESSION_WARNING_SECONDS"),
    "message.created": (MessageCreated, "to both parties of the session"),
    "message.read": (MessageRead, "to the other party when a read cursor moves"),
    "typing": (Typing, "to the other party (relayed, never stored)"),
    "admin.counts": (Overview, "to admins: the console's overview, when it changes"),
}
# Recorded in the event log: these frames carry `seq` (all the others do not).
RECORDED = frozenset(
    {
        "pairing.offer",
        "pairing.taken",
        "pairing.expired",
        "session.updated",
        "session.ending_soon",
        "message.created",
        "message.read",
    }
)
CLIENT_FRAMES: dict[str, tuple[type[BaseModel] | None, str]] = {
    "ping": (None, "answered with pong"),
    "typing": (TypingRequest, "relayed to the other party, at most 1/s"),
}
CLOSE_CODES = {
    1003: "a binary frame",
    1008: "invalid_token / token_expired / logged_out / account_deactivated /"
    " too_many_sockets (the oldest of a user's sockets past WS_MAX_SOCKETS_PER_USER:"
    " do not reconnect it) (reason says)",
    1009: "a text frame over 4 KiB",
    1012: "server restart: reconnect",
    1013: "too many unread events, or Postgres unreachable for a replay (events_unavailable):"
    " reconnect with since",
}


def _message(name: str, kind: str, data: str | None, summary: str) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": kind}}
    if name.startswith("server.") and kind in RECORDED:
        properties["seq"] = {
            "type": "integer",
            "minimum": 1,
            "description": "the user's event number: 1, 2, 3, ... with no gap, in commit"
            " order, shared by all the user's sockets; dedupe by it",
        }
    if data:
        properties["data"] = {"$ref": f"#/components/schemas/{data}"}
    return {
        "name": kind,
        "summary": summary,
        "payload": {
            "type": "object",
            "required": list(properties),
            "properties": properties,
        },
    }


def document() -> dict[str, Any]:
    models = [m for m, _ in SERVER_EVENTS.values()]
    models += [m for m, _ in CLIENT_FRAMES.values() if m is not None]
    _, defs = models_json_schema(
        [(m, "serialization") for m in dict.fromkeys(models)],
        ref_template="#/components/schemas/{model}",
    )
    messages: dict[str, Any] = {}
    for kind, (model, summary) in SERVER_EVENTS.items():
        messages["server." + kind] = _message("server." + kind, kind, model.__name__, summary)
    for kind, (request, summary) in CLIENT_FRAMES.items():
        data = request.__name__ if request else None
        messages["client." + kind] = _message("client." + kind, kind, data, summary)
    refs = {name: {"$ref": f"#/channels/ws/messages/{name}"} for name in messages}
    closes = "; ".join(f"{code}: {why}" for code, why in CLOSE_CODES.items())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "halobestie events",
            "version": "0.1.0",
            "description": (
                "GET /ws?token=<access token>[&since=<seq>]. Frames are JSON text"
                " {type, seq, data} for recorded events (seq: the user's event number,"
                " gapless, in commit order) and {type, data} for the others. With since:"
                " ready, then every event with seq > since (or resync_required), then"
                " live, no gap and no duplicate at the seam; without: ready, then live."
                " A refused token: accepted then closed 1008. Close codes: "
                + closes
                + ". The same stream over REST: GET /api/events?after=<seq>."
            ),
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "messages": messages,
                "bindings": {
                    "ws": {
                        "query": {
                            "type": "object",
                            "required": ["token"],
                            "properties": {
                                "token": {"type": "string"},
                                "since": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "description": "the last seq received: replay after it",
                                },
                            },
                        }
                    }
                },
            }
        },
        "operations": {
            "receiveEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "messages": [v for k, v in refs.items() if k.startswith("server.")],
            },
            "sendFrames": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "messages": [v for k, v in refs.items() if k.startswith("client.")],
            },
        },
        "components": {"schemas": defs["$defs"]},
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
