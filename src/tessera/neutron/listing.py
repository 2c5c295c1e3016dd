"""Neutron's list semantics over a collection of resource views (plain dicts).

What python-openstackclient relies on:

- `fields=a&fields=b`: only those attributes in each item (names the resource does
  not have are ignored, as Neutron does);
- any other parameter filters on the attribute of that name; repeating it means "any
  of these values" (Neutron's OR); `tenant_id` and `project_id` are the same filter;
  booleans accept `true`/`false`/`1`/`0`; a list-of-dicts attribute (`fixed_ips`)
  takes `key=value` items and matches when one element has it; `tags` needs every
  listed tag, `tags-any` one of them, `not-tags`/`not-tags-any` the negations; a
  filter on an attribute the resource does not have is ignored;
- `sort_key`/`sort_dir` (repeated, paired in order; default ascending by id);
- `limit` + `marker` (the id of the last item already seen): ignoring them makes the
  client re-read the first page forever, so a full page carries a
  `<collection>_links` "next" link whose marker is its last id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from tessera.neutron.errors import bad_request, not_found

RESERVED = frozenset({"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"})
_TAG_FILTERS = frozenset({"tags", "tags-any", "not-tags", "not-tags-any"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _matches_value(actual: Any, wanted: str) -> bool:
    if isinstance(actual, bool):
        low = wanted.strip().lower()
        return (low in _TRUE and actual) or (low in _FALSE and not actual)
    if actual is None:
        return wanted in ("", "None", "null")
    if isinstance(actual, list):
        if "=" in wanted:
            key, _, value = wanted.partition("=")
            return any(isinstance(item, dict) and str(item.get(key)) == value for item in actual)
        return wanted in [str(item) for item in actual]
    return str(actual) == wanted


def _tags_match(tags: Sequence[str], kind: str, values: list[str]) -> bool:
    wanted = {t for v in values for t in v.split(",") if t}
    have = set(tags)
    if kind == "tags":
        return wanted <= have
    if kind == "tags-any":
        return bool(wanted & have)
    if kind == "not-tags":
        return not wanted <= have
    return not wanted & have  # not-tags-any


def _filtered(items: list[dict[str, Any]], filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        keep = True
        for key, values in filters.items():
            if key in _TAG_FILTERS:
                keep = _tags_match(item.get("tags", []), key, values)
            elif key in item:
                keep = any(_matches_value(item[key], v) for v in values)
            if not keep:
                break
        if keep:
            out.append(item)
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    """Orders mixed values without failing: None first, then by type, then value."""
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int):
        return (2, value)
    return (3, str(value))


def _sorted(
    items: list[dict[str, Any]], keys: list[str], dirs: list[str], known: set[str]
) -> list[dict[str, Any]]:
    if len(dirs) > len(keys):
        raise bad_request("The number of sort_keys and sort_dirs must be same.")
    for key in keys:
        if key not in known:
            raise bad_request(f"{key} is an invalid attribute for sort_keys.")
    for d in dirs:
        if d not in ("asc", "desc"):
            raise bad_request(
                f"{d} is an invalid value for sort_dirs, valid values are 'asc' and 'desc'."
            )
    dirs = dirs + ["asc"] * (len(keys) - len(dirs))
    out = sorted(items, key=lambda i: str(i.get("id")))
    # Stable sorts from the least significant key to the most significant.
    for key, direction in reversed(list(zip(keys, dirs, strict=True))):
        out.sort(key=_by(key), reverse=direction == "desc")
    return out


def _by(key: str) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    return lambda item: _sort_key(item.get(key))


def _limit(raw: list[str]) -> int | None:
    if not raw:
        return None
    try:
        limit = int(raw[-1])
    except ValueError:
        raise bad_request(
            f"Bad limit request: limit must be an integer, not '{raw[-1]}'."
        ) from None
    if limit < 0:
        raise bad_request(f"Bad limit request: limit must be >= 0, not {limit}.")
    return limit or None  # Neutron: limit=0 means no limit


def list_response(
    collection: str,
    items: list[dict[str, Any]],
    query: Sequence[tuple[str, str]],
    base_url: str,
) -> dict[str, Any]:
    """The body of `GET /v2.0/<collection>` for `items` (full views) and the query."""
    params: dict[str, list[str]] = {}
    for key, value in query:
        params.setdefault(key, []).append(value)
    filters = {k: v for k, v in params.items() if k not in RESERVED}
    if "tenant_id" in filters:
        filters.setdefault("project_id", []).extend(filters.pop("tenant_id"))
    known: set[str] = set().union(*(i.keys() for i in items)) if items else set()
    if not items:
        known = set(params.get("sort_key", []))  # nothing to sort; do not refuse the keys
    chosen = _filtered(items, filters)
    chosen = _sorted(chosen, params.get("sort_key", []), params.get("sort_dir", []), known)
    limit = _limit(params.get("limit", []))
    markers = params.get("marker") or [""]
    marker = markers[-1]
    if marker:
        ids = [str(i.get("id")) for i in chosen]
        if marker not in ids:
            raise not_found("MarkerNotFound", f"Marker {marker} could not be found.")
        chosen = chosen[ids.index(marker) + 1 :]
    links: list[dict[str, str]] = []
    if limit is not None and len(chosen) > limit:
        chosen = chosen[:limit]
        rest = [(k, v) for k, v in query if k != "marker"]
        rest.append(("marker", str(chosen[-1]["id"])))
        links.append({"rel": "next", "href": f"{base_url}?{urlencode(rest)}"})
    fields = [f for f in params.get("fields", []) if f]
    body: dict[str, Any] = {collection: [select(i, fields) for i in chosen]}
    if links:
        body[f"{collection}_links"] = links
    return body


def select(item: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Only `fields` of the view (all of it when none are asked for)."""
    if not fields:
        return dict(item)
    return {f: item[f] for f in fields if f in item}
