"""Placement errors, each with the HTTP status the REST API answers for it."""

from __future__ import annotations


class PlacementError(Exception):
    status = 400


class Invalid(PlacementError):
    """A request that names things correctly but asks for something impossible."""

    status = 400


class NotFound(PlacementError):
    status = 404


class Conflict(PlacementError):
    """A stale generation, an inventory below its usage, a name already taken."""

    status = 409


class NoValidHost(PlacementError):
    """No provider can take the request (after every retry)."""

    status = 409


class Unavailable(PlacementError):
    """Cassandra is not configured or does not answer."""

    status = 503
