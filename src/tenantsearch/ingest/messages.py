"""The queue's message format: one message per accepted write request (or erasure job).

Encoded with orjson. ``v`` is the format version; an indexer that meets a newer one dead-letters
the message instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from tenantsearch.search.query import WriteOp

FORMAT_VERSION = 1

MessageKind = Literal["documents", "collection_delete", "tenant_erasure"]


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    task_id: str
    tenant: str
    collection: str | None = None
    uid: str | None = None
    ops: Sequence[WriteOp] = ()


class MalformedMessage(ValueError):
    pass


def encode(message: Message) -> bytes:
    return orjson.dumps(
        {
            "v": FORMAT_VERSION,
            "kind": message.kind,
            "task": message.task_id,
            "tenant": message.tenant,
            "collection": message.collection,
            "uid": message.uid,
            "ops": [{"id": op.id, "ver": op.version, "doc": op.document} for op in message.ops],
        }
    )


def _op(raw: Any) -> WriteOp:
    doc, doc_id = raw["doc"], raw["id"]
    if not isinstance(doc_id, str) or not (doc is None or isinstance(doc, dict)):
        raise MalformedMessage("an op needs a string id and an object (or null) document")
    return WriteOp(doc_id, int(raw["ver"]), doc)


def decode(body: bytes) -> Message:
    try:
        raw: Any = orjson.loads(body)
        if raw.get("v") != FORMAT_VERSION:
            raise MalformedMessage(f"unsupported message format {raw.get('v')!r}")
        return Message(
            kind=raw["kind"],
            task_id=raw["task"],
            tenant=raw["tenant"],
            collection=raw.get("collection"),
            uid=raw.get("uid"),
            ops=tuple(_op(op) for op in raw["ops"]),
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"cannot decode message: {exc}") from exc
