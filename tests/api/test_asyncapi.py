"""docs/asyncapi.json (the /ws protocol) is generated from the models and lists every event
the code publishes."""

from __future__ import annotations

import re
from pathlib import Path

from halobestie.api import asyncapi

ROOT = Path(__file__).resolve().parents[2]
# Event types are dotted names of the features that publish them ("pairing.offer").
PUBLISHED = re.compile(r'"((?:pairing|session|message|admin)\.[a-z_]+)"')


def test_the_committed_document_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "asyncapi.json").read_text()
    assert committed == asyncapi.render(), (
        "regenerate: python -m halobestie.api.asyncapi > docs/asyncapi.json"
    )


def test_every_published_event_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "halobestie").rglob("*.py"))
    published = set(PUBLISHED.findall(source))
    assert {"pairing.offer", "session.updated"} <= published  # the pattern still matches
    assert published <= set(asyncapi.SERVER_EVENTS)
    messages = asyncapi.document()["channels"]["ws"]["messages"]
    assert {m["name"] for m in messages.values()} >= published | {"ready", "admin.counts"}


def test_recorded_events_are_documented_with_seq_and_the_others_without() -> None:
    messages = asyncapi.document()["channels"]["ws"]["messages"]
    for name, message in messages.items():
        has_seq = "seq" in message["payload"]["properties"]
        recorded = name.startswith("server.") and message["name"] in asyncapi.RECORDED
        assert has_seq == recorded, name
    assert "admin.counts" not in asyncapi.RECORDED and "typing" not in asyncapi.RECORDED
    assert {"ready", "resync_required"} <= set(asyncapi.SERVER_EVENTS) - asyncapi.RECORDED
