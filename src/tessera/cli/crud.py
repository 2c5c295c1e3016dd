"""The five operations every resource shares, over the API's REST conventions.

Update follows the contract: PUT the whole object as GET returned it, with the changed
fields. A 409 means someone else wrote in between; the read-modify-write is simply
redone on the fresh object (a few times), as a user would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tessera.client.errors import ApiError, BadArgument
from tessera.clikit.output import Column
from tessera.clikit.params import Clear
from tessera.clikit.session import Session

UPDATE_ATTEMPTS = 3


def body(**values: Any) -> dict[str, Any]:
    """A request body from option values: unset (None) options are left out and
    `none` (CLEAR) becomes null."""
    return {k: (None if isinstance(v, Clear) else v) for k, v in values.items() if v is not None}


def list_objects(s: Session, path: str, columns: Sequence[Column], *, empty: str) -> None:
    s.out.objects(s.api.get(path) or [], columns, empty=empty)


def show_object(s: Session, path: str) -> None:
    s.out.obj(s.api.get(path))


def create_object(s: Session, path: str, fields: Mapping[str, Any]) -> None:
    s.out.obj(s.api.post(path, fields))


def update_object(s: Session, path: str, changes: Mapping[str, Any]) -> None:
    s.out.obj(put_changes(s, path, changes))


def require_changes(changes: Mapping[str, Any]) -> None:
    if not changes:
        raise BadArgument("nothing to change: give at least one option (see --help)")


def put_changes(s: Session, path: str, changes: Mapping[str, Any]) -> Any:
    require_changes(changes)
    for attempt in range(1, UPDATE_ATTEMPTS + 1):
        current = s.api.get(path)
        if not isinstance(current, Mapping):
            raise ApiError(500, f"GET {path} did not answer an object")
        try:
            return s.api.put(path, {**current, **changes})
        except ApiError as exc:
            if exc.status != 409 or attempt == UPDATE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def delete_object(s: Session, path: str, what: str) -> None:
    answer = s.api.delete(path)
    s.out.done(f"deleted {what}", answer)
