"""Who may do what: principals and the one role x action matrix.

The matrix is the only place roles are interpreted; routes name the action they perform and
:func:`authorize` decides. ``docs/security.md`` renders the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tenantsearch.errors import Forbidden, NotFound
from tenantsearch.store.records import Role


class Action(StrEnum):
    TENANTS_MANAGE = "tenants.manage"
    KEYS_MANAGE = "keys.manage"
    COLLECTIONS_READ = "collections.read"
    COLLECTIONS_WRITE = "collections.write"
    DOCUMENTS_READ = "documents.read"
    DOCUMENTS_WRITE = "documents.write"
    SEARCH = "search"
    TASKS_READ = "tasks.read"
    TOKENS_MANAGE = "tokens.manage"
    AUDIT_READ = "audit.read"
    DEAD_LETTERS_MANAGE = "dead_letters.manage"
    USAGE_READ = "usage.read"


MATRIX: Mapping[Role, frozenset[Action]] = {
    Role.PLATFORM_ADMIN: frozenset(
        {Action.TENANTS_MANAGE, Action.TASKS_READ, Action.AUDIT_READ, Action.DEAD_LETTERS_MANAGE}
    ),
    Role.ADMIN: frozenset(
        {
            Action.KEYS_MANAGE,
            Action.TOKENS_MANAGE,
            Action.AUDIT_READ,
            Action.USAGE_READ,
            Action.COLLECTIONS_READ,
            Action.COLLECTIONS_WRITE,
            Action.DOCUMENTS_READ,
            Action.DOCUMENTS_WRITE,
            Action.SEARCH,
            Action.TASKS_READ,
        }
    ),
    Role.WRITER: frozenset(
        {
            Action.COLLECTIONS_READ,
            Action.DOCUMENTS_READ,
            Action.DOCUMENTS_WRITE,
            Action.SEARCH,
            Action.TASKS_READ,
        }
    ),
    Role.READER: frozenset(
        {Action.COLLECTIONS_READ, Action.DOCUMENTS_READ, Action.SEARCH, Action.TASKS_READ}
    ),
    # A tenant token is handed to an end user's browser: it searches and reads documents of its
    # collections, always under its mandatory filter, and nothing else.
    Role.TENANT_TOKEN: frozenset({Action.DOCUMENTS_READ, Action.SEARCH}),
}


class CredentialKind(StrEnum):
    ADMIN_KEY = "admin-key"
    API_KEY = "api-key"
    JWT = "jwt"
    TENANT_TOKEN = "tenant-token"  # noqa: S105 - a credential kind, not a secret


@dataclass(frozen=True)
class Principal:
    """The verified identity behind a request. ``tenant_id`` is None only for the platform admin;
    ``collections`` None means every collection of the tenant; ``filter`` (tenant tokens) is a
    public-form filter applied to every read the principal makes."""

    key_id: str
    role: Role
    tenant_id: str | None
    collections: frozenset[str] | None = None
    kind: CredentialKind = CredentialKind.API_KEY
    filter: Mapping[str, Any] | None = None
    minted_by: str | None = None
    """Tenant tokens: the id of the credential that minted the token."""

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.PLATFORM_ADMIN

    def sees_collection(self, name: str) -> bool:
        return self.collections is None or name in self.collections


def authorize(principal: Principal, action: Action) -> None:
    if action not in MATRIX[principal.role]:
        raise Forbidden(f"a {principal.role.value} key may not perform {action.value}")


def require_tenant(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise Forbidden(
            "the platform admin key manages tenants; use a tenant's key for its data",
            code="tenant_key_required",
        )
    return principal.tenant_id


def within_reach(principal: Principal | None, collections: Sequence[str] | None) -> bool:
    """Whether a key or token reaching ``collections`` (None: all) is within what ``principal``
    reaches: a credential limited to some collections neither sees nor revokes wider ones."""
    if principal is None or principal.collections is None:
        return True
    return collections is not None and set(collections) <= principal.collections


def require_collection(principal: Principal, name: str) -> None:
    """A collection outside a key's allowed list is answered like a missing one."""
    if not principal.sees_collection(name):
        raise NotFound(f"collection {name!r} not found", code="collection_not_found")
