"""Dead letters: the platform admin inspects, replays and purges writes the indexer gave up on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tenantsearch.api.deps import DeadLettersAdmin, ServicesDep
from tenantsearch.ingest.dead_letters import DeadLetterSummary

router = APIRouter(prefix="/v1/admin/dead-letters", tags=["operations"])


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterSummary]


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
    return DeadLetterList(dead_letters=letters)


@router.get("/{letter_id}", response_model=DeadLetterSummary)
async def get_dead_letter(
    letter_id: str, _: DeadLettersAdmin, services: ServicesDep
) -> DeadLetterSummary:
    return await services.dead_letters.get(letter_id)


@router.post("/{letter_id}/replay", response_model=DeadLetterSummary)
async def replay_dead_letter(
    letter_id: str, _: DeadLettersAdmin, services: ServicesDep
) -> DeadLetterSummary:
    """Queue the write again; its task is reopened and ends with the new attempt's outcome."""
    return await services.dead_letters.replay(letter_id)


@router.delete("", response_model=Purged)
async def purge_dead_letters(
    _: DeadLettersAdmin,
    services: ServicesDep,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
) -> Purged:
    """Drop dead letters for good (one tenant's, or all)."""
    return Purged(purged=await services.dead_letters.purge(tenant))
