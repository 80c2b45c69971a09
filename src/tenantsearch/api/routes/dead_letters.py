"""Dead letters: the platform admin inspects, replays and purges writes the indexer gave up on."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tenantsearch.api.deps import DeadLettersAdmin, ServicesDep
from tenantsearch.ingest.dead_letters import DeadLetterSummary

router = APIRouter(prefix="/v1/admin/dead-letters", tags=["operations"])


class DeadLetterOut(BaseModel):
    id: str
    tenant: str
    reason: str
    attempts: int
    dead_at: datetime
    bytes: int
    kind: str | None
    task_id: str | None
    collection: str | None
    document_ids: list[str]

    @classmethod
    def of(cls, summary: DeadLetterSummary) -> DeadLetterOut:
        return cls.model_validate(summary, from_attributes=True)


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterOut]


class Purged(BaseModel):
    purged: int


@router.get("", response_model=DeadLetterList)
async def list_dead_letters(
    _: DeadLettersAdmin,
    services: ServicesDep,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadLetterList:
    """Oldest first, with the reason and the first document ids of each."""
    letters = await services.dead_letters.list(tenant=tenant, limit=limit)
    return DeadLetterList(dead_letters=[DeadLetterOut.of(d) for d in letters])


@router.get("/{letter_id}", response_model=DeadLetterOut)
async def get_dead_letter(
    letter_id: str, _: DeadLettersAdmin, services: ServicesDep
) -> DeadLetterOut:
    return DeadLetterOut.of(await services.dead_letters.get(letter_id))


@router.post("/{letter_id}/replay", response_model=DeadLetterOut)
async def replay_dead_letter(
    letter_id: str, _: DeadLettersAdmin, services: ServicesDep
) -> DeadLetterOut:
    """Queue the write again; its task is reopened and ends with the new attempt's outcome."""
    return DeadLetterOut.of(await services.dead_letters.replay(letter_id))


@router.delete("", response_model=Purged)
async def purge_dead_letters(
    _: DeadLettersAdmin,
    services: ServicesDep,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
) -> Purged:
    """Drop dead letters for good (one tenant's, or all)."""
    return Purged(purged=await services.dead_letters.purge(tenant))
