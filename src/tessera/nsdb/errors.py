"""NSDB errors: each maps to one HTTP status in the API, so callers never guess."""

from __future__ import annotations


class NsdbError(Exception):
    """Base of every NSDB error; the message is meant for humans."""


class NotFound(NsdbError):
    """The object does not exist (HTTP 404)."""


class AlreadyExists(NsdbError):
    """An object with this id (or unique key) exists (HTTP 409)."""


class Conflict(NsdbError):
    """A compare-and-set lost against a concurrent writer; re-read and retry (HTTP 409)."""


class IntegrityError(NsdbError):
    """A write names an object that does not exist or breaks an invariant (HTTP 400)."""


class Unavailable(NsdbError):
    """The backend cannot be reached (ZooKeeper down); a write's outcome is unknown:
    re-read before retrying (HTTP 503)."""


class ObjectTooLarge(NsdbError):
    """A write would store an object (or a transaction) larger than the NSDB takes
    (HTTP 413). Retrying cannot help: the object must be made smaller. Raised before
    anything is sent, so ZooKeeper never sees a request above its packet limit (which it
    would answer by dropping the whole session)."""
