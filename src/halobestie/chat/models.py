"""The chat's typed rows and payloads (the shapes of SPEC §5, documented in /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso

SenderRole = Literal["customer", "mitra"]

# Columns of `chat_messages` that make a `Message`, in every statement that returns one.
MESSAGE_COLUMNS = "id, session_id, seq, sender_id, sender_role, body, client_message_id, created_at"


class Message(BaseModel):
    """One message of a chat session, as its parties and admins see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    session_id: str
    seq: int = Field(description="1, 2, 3, ... per session, in commit order, no gap")
    sender_id: str
    sender_role: SenderRole
    body: str = Field(description="1-4000 characters, trimmed")
    client_message_id: str = Field(description="the sender's idempotency key, 1-64 characters")
    created_at: str = Field(description="ISO-8601 UTC")

    @classmethod
    def from_row(cls, row: Any) -> Message:
        """From a row holding MESSAGE_COLUMNS."""
        return cls(
            id=str(row["id"]),
            session_id=str(row["session_id"]),
            seq=row["seq"],
            sender_id=str(row["sender_id"]),
            sender_role=row["sender_role"],
            body=row["body"],
            client_message_id=row["client_message_id"],
            created_at=iso(row["created_at"]),
        )


class ReadCursor(BaseModel):
    """How far `user_id` has read: every message with `seq` at or below it."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    seq: int


class MessageOut(BaseModel):
    message: Message


class MessagesOut(BaseModel):
    messages: list[Message] = Field(description="ascending by seq")


class ReadOut(BaseModel):
    read: ReadCursor
