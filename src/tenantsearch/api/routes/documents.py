"""Documents: writes are queued (202 + task); reads come from the search engine."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response, status

from tenantsearch.api.deps import DocumentsReader, DocumentsWriter, Services, ServicesDep
from tenantsearch.api.deps import visible_collection as collection_of
from tenantsearch.api.http_cache import cached_json
from tenantsearch.api.schemas import TaskOut
from tenantsearch.auth.rbac import Principal
from tenantsearch.errors import InvalidInput, UnsupportedMediaType
from tenantsearch.store.records import Task

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"])

WaitQuery = Annotated[
    bool, Query(description="Answer once the write is searchable (bounded by the server's limit).")
]
TimeoutQuery = Annotated[
    float | None, Query(gt=0, le=300, description="Seconds to wait at most with wait=true.")
]

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


async def _answer(
    services: Services,
    principal: Principal,
    task: Task,
    wait: bool,
    timeout: float | None,
    response: Response,
) -> TaskOut:
    if wait:
        limit = min(
            timeout or services.settings.max_wait_seconds, services.settings.max_wait_seconds
        )
        task = await services.tasks.wait(principal, task, limit)
    response.status_code = status.HTTP_200_OK if task.finished else status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    return TaskOut.of(task)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


@router.put(
    "/{doc_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskOut,
    openapi_extra=_JSON_BODY,
    responses={200: {"model": TaskOut, "description": "Finished (with wait=true)"}},
)
async def put_document(
    name: str,
    doc_id: str,
    request: Request,
    response: Response,
    principal: DocumentsWriter,
    services: ServicesDep,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = None,
) -> TaskOut:
    """Create or replace one document."""
    if _media_type(request) not in ("application/json", "*/*"):
        raise UnsupportedMediaType("send the document as application/json")
    collection = await collection_of(services, principal, name)
    task = await services.writes.put_document(principal, collection, doc_id, await request.body())
    return await _answer(services, principal, task, wait, timeout, response)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskOut,
    openapi_extra=_BATCH_BODY,
    responses={200: {"model": TaskOut, "description": "Finished (with wait=true)"}},
)
async def post_documents(
    name: str,
    request: Request,
    response: Response,
    principal: DocumentsWriter,
    services: ServicesDep,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> TaskOut:
    """Create or replace a batch: a JSON array of documents, or NDJSON (one per line). Each
    document carries its ``id``. Invalid documents are reported on the task; the others land."""
    media_type = _media_type(request)
    collection = await collection_of(services, principal, name)
    body = await request.body()
    if media_type in ("application/x-ndjson", "application/jsonl", "application/json-seq"):
        lines = [line for line in body.split(b"\n") if line.strip()]
        task = await services.writes.put_documents(
            principal,
            collection,
            None,
            raw_lines=lines,
            idempotency_key=idempotency_key,
            size=len(body),
        )
    elif media_type in ("application/json", "*/*"):
        try:
            docs = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput("the body is not valid JSON", code="malformed_json") from exc
        if not isinstance(docs, list):
            raise InvalidInput(
                "the body must be a JSON array of documents (or NDJSON with "
                "Content-Type: application/x-ndjson)",
                code="invalid_batch",
            )
        task = await services.writes.put_documents(
            principal, collection, docs, idempotency_key=idempotency_key, size=len(body)
        )
    else:
        raise UnsupportedMediaType("send application/json (an array) or application/x-ndjson")
    return await _answer(services, principal, task, wait, timeout, response)


@router.delete(
    "/{doc_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskOut,
    responses={200: {"model": TaskOut, "description": "Finished (with wait=true)"}},
)
async def delete_document(
    name: str,
    doc_id: str,
    response: Response,
    principal: DocumentsWriter,
    services: ServicesDep,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = None,
) -> TaskOut:
    collection = await collection_of(services, principal, name)
    task = await services.writes.delete_document(principal, collection, doc_id)
    return await _answer(services, principal, task, wait, timeout, response)


@router.get("/{doc_id}", response_model=dict[str, Any])
async def get_document(
    name: str, doc_id: str, request: Request, principal: DocumentsReader, services: ServicesDep
) -> Response:
    """The document as last indexed (writes become visible once their task succeeded)."""
    collection = await collection_of(services, principal, name)
    document = await services.documents.get(collection, doc_id, principal.filter)
    return cached_json(request, orjson.dumps(document))
