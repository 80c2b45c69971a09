"""Search in one collection of the caller's tenant.

The route is declared here for the OpenAPI schema and for every request that is not plain; the
plain ones (a JSON body that validates) take the shortcut in ``api.search_fast``, which runs the
same ``run_search`` without FastAPI's routing and dependency machinery.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tenantsearch.api.deps import Searcher, Services, ServicesDep
from tenantsearch.api.deps import visible_collection as collection_of
from tenantsearch.api.http_cache import cached_json
from tenantsearch.api.schemas import SearchBody, SearchOut
from tenantsearch.auth.rbac import Principal
from tenantsearch.errors import FieldError, InvalidInput
from tenantsearch.search.service import SearchRequest

PATH = "/v1/collections/{name}/search"

router = APIRouter(tags=["search"])


async def run_search(
    services: Services, principal: Principal, name: str, body: SearchBody, request: Request
) -> Response:
    """One search for an authorized principal: the whole of the route, after its dependencies."""
    if body.limit > services.settings.max_search_limit:
        raise InvalidInput(
            f"limit is at most {services.settings.max_search_limit}",
            code="invalid_query",
            errors=[FieldError("/limit", f"at most {services.settings.max_search_limit}")],
        )
    collection = await collection_of(services, principal, name)
    search_request = SearchRequest(
        q=body.q,
        matching=body.matching,
        filter=body.filter,
        sort=body.sort,
        facets=body.facets,
        facet_size=body.facet_size,
        limit=body.limit,
        cursor=body.cursor,
        highlight=body.highlight,
    )
    payload = await services.search.search_json(collection, search_request, principal)
    return cached_json(request, payload)


@router.post(PATH, response_model=SearchOut)
async def search(
    name: str, body: SearchBody, request: Request, principal: Searcher, services: ServicesDep
) -> Response:
    return await run_search(services, principal, name, body, request)
