"""Tasks: the progress and outcome of asynchronous writes and deletions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tenantsearch.api.deps import ServicesDep, TasksReader
from tenantsearch.api.schemas import TaskList, TaskOut
from tenantsearch.auth.rbac import require_tenant
from tenantsearch.store.records import TaskStatus

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("", response_model=TaskList)
async def list_tasks(
    principal: TasksReader,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: TaskStatus | None = None,
) -> TaskList:
    tenant_id = require_tenant(principal)
    tasks = await services.tasks.list(principal, tenant_id, limit=limit, status=status)
    return TaskList(tasks=[TaskOut.of(t) for t in tasks])


@router.get("/{task_id}", response_model=TaskOut)
async def get_task(task_id: str, principal: TasksReader, services: ServicesDep) -> TaskOut:
    return TaskOut.of(await services.tasks.get(principal, task_id))
