"""The ZooKeeper NSDB backend (kazoo).

Layout under the root (default `/tessera`), every name escaped by
`codec.escape_component` so any string is exactly one path component:

    ROOT/v1/objects/<kind>/<id>      the object's JSON; its version is the znode's
                                     data version + 1 (a new object is at version 1)
    ROOT/v1/state/<table>/<key>      one state entry, the value as UTF-8; ephemeral entries
                                     are ephemeral znodes of the writing session. A table
                                     name such as `mac_table/<bridge>` is ONE component
                                     (`mac_table%2F<bridge>`): a hierarchy would make table
                                     `a/b` collide with key `b` of table `a`, and ephemeral
                                     znodes cannot have children.
    ROOT/v1/ids/<id>                 the kind holding the id (ids are unique across
                                     kinds): created and deleted in the same multi-op
                                     as the object, so of two creators of one id in two
                                     kinds exactly one wins. Its data, `filled`, says
                                     every object stored before the registry existed
                                     has its entry: the first client to connect to a
                                     namespace without it adds them. An id that objects
                                     of several kinds held before (a legacy duplicate)
                                     names them all (`bridges,routers`) and stays taken
                                     until the last is deleted.
    ROOT/v1/index/<index>/<key>/<id>  an empty znode per index entry
                                     (`tessera.nsdb.indexes`): created and deleted in
                                     the same multi-op as the object; an Update or
                                     Delete of an indexed kind first reads the object
                                     (its old keys) and pins its version, so a
                                     concurrent write makes the commit redo, not drift
    ROOT/v1/counters/<name>          a counter is the data version of this znode: an
                                     unconditional set bumps it atomically, one round trip
    ROOT/v1/elections/<name>/<guid>-<seq>  ephemeral sequential participants; lowest leads

`commit` is one ZooKeeper multi-op (a single op uses the plain request). Every request
waits at most `connect_wait` for a connection and `op_timeout` for the answer, then
raises `Unavailable`, so callers (the API) answer 503 instead of hanging.

Watches are ZooKeeper's one-shot watches, re-armed by the read that follows each
notification, on one notification thread per client. kazoo 2.11 has no persistent
(AddWatch) watches, and it drops every watch when a connection is lost; so after each
reconnect the client re-reads everything it watches and reports the difference, and
after a session expiry it first re-creates its ephemeral entries and election places.
Because a notification is followed by a read of the *current* value, rapid writes to one
object may be coalesced: a watcher always ends at the latest version and never sees a
version go backwards, but may skip intermediate ones (the memory backend reports each).
"""

from tessera.nsdb.zookeeper.client import ZookeeperNsdb
from tessera.nsdb.zookeeper.election import ZookeeperElection

__all__ = ["ZookeeperElection", "ZookeeperNsdb"]
