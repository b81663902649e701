"""Redis state store: one store shared by every tritonserver (replica) that points at it, on one
Redis (or Valkey) server or on a Redis Cluster, with one key layout and one code path (a
standalone server is a cluster of one node).

Same contract as the SQLite store (see `freshrec.store.base`):

- Every write is a Lua script, atomic on its node, on the keys of one hash slot (on a standalone
  server an ingest's script spans the global and the users' keys, all on the one node): an event retried
  with the same `event_id` (within `event_id_ttl`) is stored once even when two replicas race; the
  catalog version is INCRemented in the script that writes the items, so `items_since(v)` on any
  replica returns exactly the items written after `v`.
- Durable acknowledgement: a write returns after its node fsynced it (`appendonly yes` +
  `appendfsync always`: Redis fsyncs the AOF before it replies; the store warns at open when a
  node is not configured so) and, when that node has a connected replica, after `WAIT 1` saw one
  replica take it. A WAIT that times out refuses the write with `StoreUnavailable` (retriable:
  the write may be applied, a retry with the same event ids is recognised).
- Any connection error, timeout, a slot without a primary (CLUSTERDOWN, MOVED to a node not
  reachable yet) or a server that is loading / out of disk / read-only raises `StoreUnavailable`
  (gRPC UNAVAILABLE) within about the socket timeout (1 s by default).

URL: `redis://[[user]:password@]host:port/db?options` for a standalone server, and
`redis+cluster://[[user]:password@]host:port?options` for a Redis Cluster reached through any of its
nodes (`rediss://`, `rediss+cluster://` for TLS). Options: `prefix` namespaces every key (default
`freshrec:`, no braces); `timeout` is the socket connect and read timeout in seconds; `window` is how
many latest events are kept for `popular_items`; `event_id_ttl` is how long (seconds, default 7
days) an event id is remembered for idempotency; `lease` is how long (seconds, default 1) arrival
numbers reserved for a write stay usable. Other query options go to redis-py.

Key layout (P = prefix; `{...}` is the Redis Cluster hash tag: the keys of one tag share a slot):
  P{g}:seq          counter: arrival number of the newest event ever reserved (`last_arrival`)
  P{g}:reserved     server time (ms) of the latest reservation (readers wait out its lease)
  P{g}:recent       list of the latest `window` events, newest first, "<seq 16 digits>|item_id"
  P{g}:layout       "2": this layout
  P{u:<user>}:ev    sorted set of a user's events: score = timestamp, member = "<seq 16 digits>|json"
                    (json: [item_id, event_type, timestamp, value or null, event_id or null])
                    (equal timestamps order by arrival seq, as SQLite's ORDER BY ts, seq)
  P{u:<user>}:seen  set of every item the user interacted with
  P{u:<user>}:ids   sorted set of the user's event ids -> expiry (ms): idempotency keys; a
                    forgotten user's stay until they expire (retries stay duplicates)
  P{u:<user>}:gone  popularity entries of a forgotten user until they left P{g}:recent
  P{cat}:version    counter: catalog version
  P{cat}:items      sorted set item_id -> version of its last write
  P{cat}:idx        hash item_id -> id_index (known items)
  P{cat}:spaces     set of the vector spaces >= 2 written since their last `drop_vectors`
  P{cat}:item:<id>  hash text, metadata, id_index, vector, content, embedding, topics (float32 bytes; empty:
                    none), version, and vector:<space> per space >= 2 holding a vector of the item

Arrival numbers. `freshrec update` cuts its windows by them, so they must be global and ordered:
every event stored after a reader saw number N gets a number above N. An ingest therefore makes
two single-slot writes: it reserves numbers in P{g} (INCRBY, with the reservation's server time,
and pushes the events' popularity entries), then writes the events in the user's slot, which
refuses numbers older than `lease`. A reader of numbers (`last_arrival`, `numbered_events`) reads
the counter and waits until the latest reservation's lease (plus 250 ms of clock skew between
nodes) has passed: by then every number up to the counter is written or will never be. A write
that fails after its reservation leaves its numbers unused (gaps are allowed) and its popularity
entries in the window. The global slot is one key per ingest: its node bounds the ingest rate.
On a standalone server every key is on the one node, and the two steps are one script (one round
trip, one fsync): numbers are taken and written atomically, and readers have no lease to wait for.

Older states: the layout before hash tags (`P ev:seq`, `P item:<id>`, ...) is refused at open;
move it with `freshrec copy-state` (see the README).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from freshrec.store.base import (CatalogBlock, Event, Item, StoreUnavailable, UserHistory, check_space, check_vectors, stack_blobs,
                                 stack_vectors)  # fmt: skip

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "freshrec:"
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_WINDOW = 10000
DEFAULT_EVENT_ID_TTL_S = 7 * 24 * 3600.0  # a client retry comes within seconds; a week covers replays of a day's log
DEFAULT_LEASE_S = 1.0  # a reservation is written within one round trip; a second is far beyond that
CLOCK_SKEW_S = 0.25  # how far apart the nodes' clocks may be (NTP keeps them within milliseconds)
REPLICA_CHECK_S = 5.0  # how long a node's replica count is trusted before it is asked again
LAYOUT = "2"
_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "READONLY", "BUSY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "EXPIRED",
                        "NOREPLICA")  # fmt: skip
_OPTIONS = ("prefix", "timeout", "window", "event_id_ttl", "lease")

# KEYS: {g}:seq, {g}:reserved, {g}:recent. ARGV: window, then the item id of each event to number.
# Returns {first number, server time in ms}: the numbers first .. first + #items - 1 are the caller's.
_RESERVE = """
local n = #ARGV - 1
local last = redis.call('INCRBY', KEYS[1], n)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], now)
local first = last - n + 1
for i = 1, n do
  redis.call('LPUSH', KEYS[3], string.format('%016d', first + i - 1) .. '|' .. ARGV[1 + i])
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
return {first, now}
"""

# KEYS: (u:<user>:ev, u:<user>:seen, u:<user>:ids) per user of one slot.
# ARGV: lease ms, reservation time ms, event id ttl ms, then (user index from 0, seq 16 digits,
# event_id or "", item_id, payload json, timestamp) per event. Numbers reserved longer than the
# lease ago are refused (a reader may have counted them as never used). Returns how many were new.
_ADD_EVENTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[2]) + tonumber(ARGV[1]) then return redis.error_reply('EXPIRED arrival numbers reserved too long ago') end
local ttl = tonumber(ARGV[3])
for k = 3, #KEYS, 3 do redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now) end
local n = 0
for a = 4, #ARGV, 6 do
  local k = 3 * tonumber(ARGV[a])
  local eid = ARGV[a + 2]
  local new = true
  if eid ~= '' then
    if redis.call('ZSCORE', KEYS[k + 3], eid) then new = false else redis.call('ZADD', KEYS[k + 3], now + ttl, eid) end
  end
  if new then
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 5], ARGV[a + 1] .. '|' .. ARGV[a + 4])
    redis.call('SADD', KEYS[k + 2], ARGV[a + 3])
    n = n + 1
  end
end
for k = 3, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], ttl) end
end
return n
"""

# Standalone server (every key on one node): the reservation and the write in one script, one
# round trip and one fsync; the numbers are taken and written atomically, so there is no lease.
# KEYS: {g}:seq, {g}:recent, then (u:<user>:ev, u:<user>:seen, u:<user>:ids) per user. ARGV: window,
# event id ttl ms, then (user index from 0, event_id or "", item_id, payload json, timestamp) per
# event. An event whose id is known (and not expired) takes no number. Returns how many were new.
_INGEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for k = 5, #KEYS, 3 do redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now) end
local fresh = {}
for a = 3, #ARGV, 5 do
  local u = 3 + 3 * tonumber(ARGV[a])
  local eid = ARGV[a + 1]
  if eid == '' or not redis.call('ZSCORE', KEYS[u + 2], eid) then
    if eid ~= '' then redis.call('ZADD', KEYS[u + 2], now + ttl, eid) end
    fresh[#fresh + 1] = a
  end
end
if #fresh == 0 then return 0 end
local first = redis.call('INCRBY', KEYS[1], #fresh) - #fresh + 1
for i, a in ipairs(fresh) do
  local u = 3 + 3 * tonumber(ARGV[a])
  local seq = string.format('%016d', first + i - 1)
  redis.call('ZADD', KEYS[u], ARGV[a + 4], seq .. '|' .. ARGV[a + 3])
  redis.call('SADD', KEYS[u + 1], ARGV[a + 2])
  redis.call('LPUSH', KEYS[2], seq .. '|' .. ARGV[a + 2])
end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
for k = 5, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], ttl) end
end
return #fresh
"""

# KEYS: u:<user>:ev, u:<user>:seen, u:<user>:gone. The user's events and seen set go; their
# popularity entries ("<seq>|item_id") wait in :gone until the caller took them out of {g}:recent;
# the event ids stay in :ids. Returns {events removed, entries waiting...}.
_FORGET_USER = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #members do
  local m = members[i]
  local bar = string.find(m, '|', 1, true)
  redis.call('SADD', KEYS[3], string.sub(m, 1, bar) .. cjson.decode(string.sub(m, bar + 1))[1])
end
redis.call('DEL', KEYS[1], KEYS[2])
local out = redis.call('SMEMBERS', KEYS[3])
table.insert(out, 1, #members)
return out
"""

# KEYS: {g}:recent. ARGV: entries to remove. Returns 1 when any was there.
_DROP_RECENT = """
local drop = {}
for i = 1, #ARGV do drop[ARGV[i]] = true end
local recent = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, dropped = {}, false
for i = 1, #recent do
  if drop[recent[i]] then dropped = true else keep[#keep + 1] = recent[i] end
end
if dropped then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
return dropped and 1 or 0
"""

# KEYS: {cat}:version, {cat}:items, {cat}:idx, {cat}:spaces, then {cat}:item:<id> per item.
# ARGV: space, then (item_id, text, metadata, id_index, vector, content, embedding, topics) per item.
# The item's vectors of every space >= 2 go; its vector lands in `vector` (space 1) or `vector:<space>`.
_UPSERT_ITEMS = """
local v = redis.call('INCR', KEYS[1])
local space = ARGV[1]
local others = redis.call('SMEMBERS', KEYS[4])
for j = 1, #others do others[j] = 'vector:' .. others[j] end
local added = false
for i = 1, #KEYS - 4 do
  local a = 1 + (i - 1) * 8
  local key = KEYS[4 + i]
  if #others > 0 then redis.call('HDEL', key, unpack(others)) end
  local vec = ARGV[a + 5]
  if space ~= '1' then
    if vec ~= '' then
      redis.call('HSET', key, 'vector:' .. space, vec)
      added = true
    end
    vec = ''
  end
  redis.call('HSET', key, 'text', ARGV[a + 2], 'metadata', ARGV[a + 3], 'id_index', ARGV[a + 4],
             'vector', vec, 'content', ARGV[a + 6], 'embedding', ARGV[a + 7], 'topics', ARGV[a + 8], 'version', v)
  redis.call('ZADD', KEYS[2], v, ARGV[a + 1])
  redis.call('HSET', KEYS[3], ARGV[a + 1], ARGV[a + 4])
end
if added then redis.call('SADD', KEYS[4], space) end
return v
"""

# KEYS: {cat}:spaces, then {cat}:item:<id> per item. ARGV: space, then a vector per item.
# Existing items only (a missing hash is never created); returns how many were written.
_PUT_VECTORS = """
local field = ARGV[1] == '1' and 'vector' or 'vector:' .. ARGV[1]
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], field, ARGV[i])
    n = n + 1
  end
end
if n > 0 and ARGV[1] ~= '1' then redis.call('SADD', KEYS[1], ARGV[1]) end
return n
"""

# KEYS: {cat}:idx, then {cat}:item:<id> per item. ARGV: (item_id, id_index) per item.
_ASSIGN_ID_ROWS = """
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local a = (i - 2) * 2
    redis.call('HSET', KEYS[i], 'id_index', ARGV[a + 2])
    redis.call('HSET', KEYS[1], ARGV[a + 1], ARGV[a + 2])
    n = n + 1
  end
end
return n
"""


def _parse_url(url: str) -> tuple[str, dict[str, str], bool]:
    """Splits freshrec's own query options off the URL (the rest stays for redis-py) and tells a
    cluster URL (`redis+cluster://`, `rediss+cluster://`) from a standalone one."""
    parts = urlsplit(url)
    cluster = parts.scheme.endswith("+cluster")
    ours, theirs = {}, []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OPTIONS:
            ours[k] = v
        else:
            theirs.append((k, v))
    scheme = parts.scheme.removesuffix("+cluster")
    path = "" if cluster else parts.path  # a cluster has database 0 only
    return urlunsplit(parts._replace(scheme=scheme, path=path, query=urlencode(theirs))), ours, cluster


def _reply_code(e: BaseException | None) -> str:
    """The error code of a Redis error reply ("NOREPLICAS", "EXPIRED"...), also inside a pipeline's error."""
    text = str(e).rsplit("caused error: ", 1)[-1]
    return text.split(" ", 1)[0].upper()


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


def _fmt_float(x: float) -> str:
    return repr(float(x))


def _payload(e: Event) -> str:
    """The json of an event's member in `P{u:<user>}:ev` (after "<seq>|"): [item_id, event_type, timestamp, value or null, event_id or null]."""
    value = None if math.isnan(e.value) else float(e.value)
    return json.dumps([e.item_id, e.event_type, float(e.timestamp), value, e.event_id], separators=(",", ":"))


def _blob(x: np.ndarray | None) -> bytes:
    return b"" if x is None else np.asarray(x, dtype=np.float32).tobytes()


def _array(b: bytes | None) -> np.ndarray | None:
    return np.frombuffer(b, dtype=np.float32).copy() if b else None


def _recent_item(entry: str) -> str:
    """The item id of an ev:recent entry ("<seq 16 digits>|item_id", or a bare item id)."""
    if len(entry) > 17 and entry[16] == "|" and entry[:16].isdigit():
        return entry[17:]
    return entry


def _vector_field(space: int) -> str:
    """The item-hash field holding the item's vector in `space`."""
    return "vector" if check_space(space) == 1 else f"vector:{int(space)}"


class _Expired(Exception):
    """The arrival numbers of a write were reserved longer than the lease ago: not written."""


class RedisStore:
    def __init__(self, url: str, *, prefix: str | None = None, timeout_s: float | None = None, window: int | None = None,
                 event_id_ttl_s: float | None = None, lease_s: float | None = None) -> None:  # fmt: skip
        import redis
        from redis.commands.core import Script

        self._redis = redis
        self._url, opts, self.cluster = _parse_url(url)
        self.prefix = prefix if prefix is not None else opts.get("prefix", DEFAULT_PREFIX)
        self.timeout_s = float(timeout_s if timeout_s is not None else opts.get("timeout", DEFAULT_TIMEOUT_S))
        self.window = int(window if window is not None else opts.get("window", DEFAULT_WINDOW))
        self.event_id_ttl_s = float(event_id_ttl_s if event_id_ttl_s is not None else opts.get("event_id_ttl", DEFAULT_EVENT_ID_TTL_S))
        self.lease_s = float(lease_s if lease_s is not None else opts.get("lease", DEFAULT_LEASE_S))
        if self.window < 1 or not self.timeout_s > 0 or not self.event_id_ttl_s >= 1 or not self.lease_s > 0 or set("{}") & set(self.prefix):
            raise ValueError(f"invalid redis store options in {self._safe_url(url)!r}")
        self._db: Any = None
        self._stale = False  # the cluster's slot map needs a refresh before the next command
        self._replicas: dict[str, tuple[int, float]] = {}  # node -> (connected replicas, when asked)
        self.one_script = not self.cluster  # an ingest is one script where every key is on one node
        self._wait_ms = max(1, int(self.timeout_s * 500))  # WAIT's answer must come before the socket timeout
        encoder = redis.Redis()  # never connects: scripts only need its encoder for their sha
        self._s_reserve, self._s_add_events, self._s_ingest, self._s_forget_user, self._s_drop_recent = (
            Script(encoder, s) for s in (_RESERVE, _ADD_EVENTS, _INGEST, _FORGET_USER, _DROP_RECENT))  # fmt: skip
        self._s_upsert_items, self._s_put_vectors, self._s_assign_id_rows = (
            Script(encoder, s) for s in (_UPSERT_ITEMS, _PUT_VECTORS, _ASSIGN_ID_ROWS))  # fmt: skip
        p = self.prefix
        self.k_seq, self.k_reserved, self.k_recent, self.k_layout = p + "{g}:seq", p + "{g}:reserved", p + "{g}:recent", p + "{g}:layout"
        c = p + "{cat}:"
        self.k_version, self.k_cat, self.k_idx, self.k_spaces = c + "version", c + "items", c + "idx", c + "spaces"
        try:  # reach the server now so a wrong URL fails at load, not at the first request
            self._call(lambda: [n.ping() for n in self._primaries()], retry=True)
        except StoreUnavailable:
            log.warning("redis state store %s not reachable yet; requests fail as UNAVAILABLE until it is", self._safe_url(url))
        else:
            self._check_layout()
            self._check_durability()

    @staticmethod
    def _safe_url(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query=""))

    # -- connections ------------------------------------------------------------------------
    @property
    def db(self) -> Any:
        """The redis-py client: `Redis` (standalone) or `RedisCluster`, opened at first use."""
        if self._db is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No retries inside redis-py: a timed-out write may have been applied, and retrying an
            # event without an event_id would store it twice. `_call` retries once itself, only
            # where that is safe (reads, idempotent writes, a slot that moved).
            kw = dict(socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0))
            if self.cluster:
                from redis.cluster import RedisCluster

                self._db = RedisCluster.from_url(self._url, **kw)  # reads the slot map: raises when no node answers
            else:
                self._db = self._redis.Redis.from_url(self._url, retry_on_timeout=False, **kw)
        return self._db

    def _node(self, key: str) -> Any:
        """The client of the primary serving `key`'s slot (the server itself when standalone)."""
        db = self.db
        if not self.cluster:
            return db
        if self._stale:
            self._stale = False
            db.nodes_manager.initialize()
        return db.get_node_from_key(key).redis_connection

    def _primaries(self) -> list:
        db = self.db
        if not self.cluster:
            return [db]
        if self._stale:
            self._stale = False
            db.nodes_manager.initialize()
        return [n.redis_connection for n in db.get_primaries()]

    @staticmethod
    def _name(node: Any) -> str:
        kw = node.connection_pool.connection_kwargs
        return f"{kw.get('host')}:{kw.get('port')}"

    def _replica_count(self, node: Any) -> int:
        """Replicas of a primary that are in sync (`state=online`: a replica still loading the
        primary's snapshot cannot confirm a write), asked again every few seconds and after a
        failed WAIT."""
        name, now = self._name(node), time.monotonic()
        known = self._replicas.get(name)
        if known is None or now - known[1] > REPLICA_CHECK_S:
            info = node.info("replication")
            online = sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")
            known = (online, now)
            self._replicas[name] = known
        return known[0]

    def _check_layout(self) -> None:
        """Refuses a state written in the layout before hash tags (it would read as empty)."""
        def old() -> bool:
            return not self._node(self.k_layout).exists(self.k_layout) and any(
                self._node(k).exists(k) for k in (self.prefix + "ev:seq", self.prefix + "cat:version"))

        if self._call(old, retry=True):
            raise RuntimeError(f"redis state store {self._safe_url(self._url)}: the keys under prefix {self.prefix!r} are in the "
                               "layout before hash tags; move them with `freshrec copy-state` (README: Redis Cluster)")  # fmt: skip
        try:
            self._node(self.k_layout).set(self.k_layout, LAYOUT, nx=True)
        except self._redis.RedisError:  # a read-only user: the marker is a courtesy
            pass

    def _check_durability(self) -> None:
        """Warns when a node would acknowledge writes before they are on disk."""
        for node in self._primaries():
            try:
                cfg = node.config_get("append*")
            except self._redis.RedisError:  # CONFIG disabled (managed Redis): nothing to check
                return
            if cfg.get(b"appendonly", cfg.get("appendonly")) not in (b"yes", "yes") or cfg.get(
                b"appendfsync", cfg.get("appendfsync")
            ) not in (b"always", "always"):
                log.warning("redis state store: %s is not run with appendonly yes + appendfsync always; "
                            "acknowledged writes may be lost on a crash", self._name(node))  # fmt: skip

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], retry: bool) -> Any:
        r = self._redis
        ex = r.exceptions
        for attempt in (0, 1):
            try:
                return fn()
            except (ex.MovedError, ex.AskError) as e:  # not executed: the slot moved (failover, resharding)
                self._stale = True
                if attempt:
                    raise StoreUnavailable(f"state store slot moved: {e}") from e
            except r.TimeoutError as e:  # the server may have applied it: never retried
                self._stale = self.cluster
                raise StoreUnavailable(f"state store timed out: {e}") from e
            except r.ConnectionError as e:  # includes BusyLoadingError (LOADING)
                self._stale = self.cluster
                if isinstance(e, r.BusyLoadingError) or not retry or attempt:
                    raise StoreUnavailable(f"state store unreachable: {e}") from e
                # A pooled connection broken by a server restart, or a primary replaced: one fresh try.
            except (ex.ClusterDownError, ex.TryAgainError, ex.ClusterError, ex.RedisClusterException) as e:  # no primary for a slot (yet)
                self._stale = True
                raise StoreUnavailable(f"state store cluster not serving: {e}") from e
            except r.ResponseError as e:
                if _reply_code(e) in _UNAVAILABLE_REPLIES or isinstance(e, r.ReadOnlyError):
                    self._stale = self.cluster
                    raise StoreUnavailable(f"state store did not accept the request: {e}") from e
                raise
        raise AssertionError("unreachable")

    def _write(self, key: str, calls: list[tuple[Any, list, list]], retry: bool) -> list:
        """Runs scripts on the node of `key` (all their keys in one slot each) on one connection,
        then, when that node has a replica, `WAIT 1`: the replies once the writes are on the
        node's disk and on a replica. A WAIT that saw no replica raises StoreUnavailable."""
        def run() -> list:
            node = self._node(key)
            replicated = self._replica_count(node) > 0
            for load in (False, True):
                if load:  # NOSCRIPT: a node that restarted or was promoted (the script did not run)
                    for script, _, _ in calls:
                        node.script_load(script.script)
                with node.pipeline(transaction=False) as pipe:
                    for script, keys, args in calls:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    if replicated:
                        pipe.execute_command("WAIT", 1, self._wait_ms)
                    try:
                        out = pipe.execute()
                        break
                    except self._redis.exceptions.NoScriptError:
                        if load:
                            raise
            if replicated and int(out[-1]) < 1:
                self._replicas.pop(self._name(node), None)  # ask again: the replica may be gone
                raise StoreUnavailable(f"state store write not confirmed by a replica within {self._wait_ms} ms; retry")
            return out[: len(calls)]

        return self._call(run, retry=retry)

    def _item_key(self, item_id: str) -> str:
        return self.prefix + "{cat}:item:" + item_id

    def _user_keys(self, user_id: str) -> tuple[str, str, str, str]:
        """ev, seen, ids, gone of a user: one hash tag, one slot."""
        base = f"{self.prefix}{{u:{user_id}}}:"
        return base + "ev", base + "seen", base + "ids", base + "gone"

    # -- writes -----------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> int:
        """Reserves arrival numbers for the events not known as retries, then writes them in
        their users' slots (one script per slot): durable, and on a replica when there is one."""
        events = list(events)
        if not events:
            return 0
        # Retrying is safe only when every event carries an id (the retry is then recognised).
        idempotent = all(e.event_id for e in events)
        if self.one_script:
            return self._ingest(events, idempotent)
        known = self._known_ids(events)
        fresh, taken = [], set()
        for e in events:
            if e.event_id:
                key = (e.user_id, e.event_id)
                if key in known or key in taken:
                    continue
                taken.add(key)
            fresh.append(e)
        if not fresh:
            return 0
        for attempt in (0, 1):
            args = [self.window] + [e.item_id for e in fresh]
            first, reserved_ms = self._write(self.k_seq, [(self._s_reserve, [self.k_seq, self.k_reserved, self.k_recent], args)],
                                             retry=True)[0]  # fmt: skip  (a repeated reservation only leaves a gap)
            try:
                return self._store_events(fresh, int(first), int(reserved_ms), idempotent)
            except _Expired:
                if attempt:
                    raise StoreUnavailable("state store write came after its arrival numbers' lease twice; retry") from None
        raise AssertionError("unreachable")

    def _ingest(self, events: list[Event], idempotent: bool) -> int:
        """Standalone: numbers reserved and events written by one script (one round trip, one fsync)."""
        index: dict[str, int] = {}
        keys: list[str] = [self.k_seq, self.k_recent]
        args: list[Any] = [self.window, int(self.event_id_ttl_s * 1000)]
        for e in events:
            if e.user_id not in index:
                index[e.user_id] = len(index)
                keys.extend(self._user_keys(e.user_id)[:3])
            args.extend([index[e.user_id], e.event_id or "", e.item_id, _payload(e), _fmt_float(float(e.timestamp))])
        return int(self._write(self.k_seq, [(self._s_ingest, keys, args)], retry=idempotent)[0])

    def _known_ids(self, events: list[Event]) -> set[tuple[str, str]]:
        """(user, event id) pairs already stored and not expired: a retry takes no arrival number."""
        ids: dict[str, list[str]] = {}
        for e in events:
            if e.event_id:
                ids.setdefault(e.user_id, []).append(e.event_id)
        if not ids:
            return set()
        now_ms = time.time() * 1000.0
        known: set[tuple[str, str]] = set()
        for node_users in self._by_node(list(ids)).values():

            def read(node_users=node_users):
                node = self._node(self._user_keys(node_users[0])[0])
                with node.pipeline(transaction=False) as pipe:
                    for user in node_users:
                        pipe.zmscore(self._user_keys(user)[2], ids[user])
                    return pipe.execute()

            for user, scores in zip(node_users, self._call(read, retry=True)):
                known.update((user, eid) for eid, s in zip(ids[user], scores) if s is not None and s > now_ms)
        return known

    def _node_name(self, key: str) -> str:
        """Which node serves `key` ("" when standalone): writes to one node share a round trip."""
        return self._call(lambda: self._name(self._node(key)), retry=True) if self.cluster else ""

    def _by_node(self, users: list[str]) -> dict[str, list[str]]:
        """Users grouped by the node serving their slot (one group when standalone)."""
        groups: dict[str, list[str]] = {}
        for user in users:
            groups.setdefault(self._node_name(self._user_keys(user)[0]), []).append(user)
        return groups

    def _store_events(self, fresh: list[Event], first: int, reserved_ms: int, idempotent: bool) -> int:
        from redis.crc import key_slot

        by_slot: dict[int, dict[str, list[tuple[int, Event]]]] = {}
        for k, e in enumerate(fresh):
            slot = key_slot(self._user_keys(e.user_id)[0].encode())
            by_slot.setdefault(slot, {}).setdefault(e.user_id, []).append((first + k, e))
        calls_by_node: dict[str, list] = {}
        for users in by_slot.values():
            keys: list[str] = []
            args: list[Any] = [int(self.lease_s * 1000), reserved_ms, int(self.event_id_ttl_s * 1000)]
            for j, (user, numbered) in enumerate(users.items()):
                keys.extend(self._user_keys(user)[:3])
                for seq, e in numbered:
                    args.extend([j, f"{seq:016d}", e.event_id or "", e.item_id, _payload(e), _fmt_float(float(e.timestamp))])
            calls_by_node.setdefault(self._node_name(keys[0]), []).append((keys[0], keys, args))
        n = 0
        for calls in calls_by_node.values():
            try:
                replies = self._write(calls[0][0], [(self._s_add_events, keys, args) for _, keys, args in calls], retry=idempotent)
            except StoreUnavailable as e:
                if _reply_code(e.__cause__) == "EXPIRED":
                    raise _Expired() from e
                raise
            n += sum(int(x) for x in replies)
        return n

    def forget_user(self, user_id: str) -> int:
        """Three single-slot steps, each durable (and replicated) when it returns; a repeat (or a
        retry after a failure) finishes what an earlier call left. The AOF keeps the removed events'
        earlier commands until Redis rewrites it (BGREWRITEAOF)."""
        k_ev, k_seen, _, k_gone = self._user_keys(user_id)
        reply = self._write(k_ev, [(self._s_forget_user, [k_ev, k_seen, k_gone], [])], retry=True)[0]
        n, entries = int(reply[0]), list(reply[1:])
        if entries:
            for start in range(0, len(entries), 10000):
                self._write(self.k_recent, [(self._s_drop_recent, [self.k_recent], entries[start : start + 10000])], retry=True)
            self._call(lambda: self._node(k_gone).delete(k_gone), retry=True)
        return n

    def upsert_items(self, items: Sequence[Item], space: int = 1) -> int:
        space = check_space(space)
        items = list(items)
        if not items:
            return 0
        keys = [self.k_version, self.k_cat, self.k_idx, self.k_spaces]
        args: list[Any] = [str(space)]
        for it in items:
            keys.append(self._item_key(it.item_id))
            args.extend([it.item_id, it.text, it.metadata, int(it.id_index), _blob(it.vector), _blob(it.content), _blob(it.embedding),
                         _blob(it.topics)])  # fmt: skip
        # A repeated upsert writes the same content again under a new version: safe to retry.
        self._write(self.k_version, [(self._s_upsert_items, keys, args)], retry=True)
        return len(items)

    def put_vectors(self, space: int, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """One script per 1,000 items (each durable when it returns)."""
        space = check_space(space)
        ids, vectors = check_vectors(item_ids, vectors)
        n = 0
        for start in range(0, len(ids), 1000):
            keys = [self.k_spaces] + [self._item_key(i) for i in ids[start : start + 1000]]
            args = [str(space)] + [v.tobytes() for v in vectors[start : start + 1000]]
            n += int(self._write(self.k_version, [(self._s_put_vectors, keys, args)], retry=True)[0])  # idempotent
        return n

    def drop_vectors(self, space: int) -> int:
        """HDEL over every item, 1,000 per pipeline, then the space leaves cat:spaces."""
        if check_space(space) == 1:
            raise ValueError("vector space 1 cannot be dropped (it holds the vectors of `freshrec build`)")
        field = f"vector:{int(space)}"
        n = sum(self._per_item(self._all_ids(), lambda pipe, key: pipe.hdel(key, field), write=True))
        self._call(lambda: self._node(self.k_spaces).srem(self.k_spaces, str(int(space))), retry=True)
        return n

    def assign_id_rows(self, rows: Mapping[str, int]) -> int:
        """One script per 1,000 items (each durable when it returns)."""
        pairs, n = list(rows.items()), 0
        for start in range(0, len(pairs), 1000):
            chunk = pairs[start : start + 1000]
            keys = [self.k_idx] + [self._item_key(i) for i, _ in chunk]
            args = [x for i, r in chunk for x in (i, int(r))]
            n += int(self._write(self.k_version, [(self._s_assign_id_rows, keys, args)], retry=True)[0])  # idempotent
        return n

    # -- reads ------------------------------------------------------------------------------
    def user_history(self, user_id: str, limit: int) -> UserHistory:
        k_ev, k_seen = self._user_keys(user_id)[:2]
        if int(limit) <= 0:
            rows: list[bytes] = []
            seen = self._call(lambda: self._node(k_seen).smembers(k_seen), retry=True)
        else:

            def read():
                with self._node(k_ev).pipeline(transaction=True) as pipe:  # one snapshot: MULTI/EXEC in the user's slot
                    pipe.zrevrange(k_ev, 0, int(limit) - 1)
                    pipe.smembers(k_seen)
                    return pipe.execute()

            rows, seen = self._call(read, retry=True)
        parsed = [json.loads(m.split(b"|", 1)[1]) for m in reversed(rows)]
        return UserHistory(
            item_ids=[r[0] for r in parsed],
            event_types=[r[1] for r in parsed],
            timestamps=[float(r[2]) for r in parsed],
            values=[float("nan") if r[3] is None else float(r[3]) for r in parsed],
            seen={s.decode() for s in seen},
        )

    def _per_item(self, ids: list[str], command: Callable[[Any, str], Any], write: bool = False) -> list:
        """`command(pipe, item key)` for every id, 1,000 per pipeline on the catalog's node (a read,
        or an idempotent write: retried once on a broken connection, replicated like `_write`);
        the replies in order."""
        out: list = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]

            def run(chunk=chunk):
                node = self._node(self.k_version)
                replicated = write and self._replica_count(node) > 0
                with node.pipeline(transaction=False) as pipe:
                    for item_id in chunk:
                        command(pipe, self._item_key(item_id))
                    if replicated:
                        pipe.execute_command("WAIT", 1, self._wait_ms)
                    replies = pipe.execute()
                if replicated and int(replies.pop()) < 1:
                    self._replicas.pop(self._name(node), None)
                    raise StoreUnavailable(f"state store write not confirmed by a replica within {self._wait_ms} ms; retry")
                return replies

            out += self._call(run, retry=True)
        return out

    def _all_ids(self) -> list[str]:
        return [i.decode() for i in self._call(lambda: self._node(self.k_cat).zrange(self.k_cat, 0, -1), retry=True)]

    def _catalog_since(self, version: int, fields: tuple[str, ...]) -> tuple[list[str], list[list[bytes]], int]:
        """Ids written after `version` (version order), the given hash fields of each, and the version."""
        # The version is INCRemented in the script that writes the items, so this snapshot of
        # cat:items holds every item written up to the highest version it shows; the result's
        # version is that highest version, never the counter (which may already be further).
        # An item rewritten since the snapshot carries its newer content (and comes again at the
        # next refresh): never older than its version here.
        rows = self._call(
            lambda: self._node(self.k_cat).zrangebyscore(self.k_cat, f"({int(version)}", "+inf", withscores=True), retry=True
        )
        if not rows:
            return [], [], int(version)
        ids = [r[0].decode() for r in rows]
        values = self._per_item(ids, lambda pipe, key: pipe.hmget(key, fields))
        return ids, values, max(int(version), int(max(score for _, score in rows)))
    def items_since(self, version: int, space: int = 1) -> tuple[list[Item], int]:
        fields = ("text", "metadata", "id_index", _vector_field(space), "content", "embedding", "topics")
        ids, values, version = self._catalog_since(version, fields)
        items = [Item(item_id, text.decode(), np.frombuffer(vector or b"", dtype=np.float32).copy(), metadata.decode(), int(id_index),
                      _array(content), _array(embedding), _array(topics))
                 for item_id, (text, metadata, id_index, vector, content, embedding, topics) in zip(ids, values)]  # fmt: skip
        return items, version

    def catalog_since(self, version: int, space: int = 1) -> CatalogBlock:
        ids, values, version = self._catalog_since(version, (_vector_field(space), "content", "topics"))
        if not ids:
            return CatalogBlock([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), version, np.zeros(0, bool))
        vectors, missing = stack_vectors([v[0] for v in values])
        return CatalogBlock(ids, vectors, stack_blobs([v[1] for v in values]), version, missing, stack_blobs([v[2] for v in values]))

    def item_vectors_since(self, version: int, space: int = 1) -> tuple[list[str], np.ndarray, int]:
        ids, values, version = self._catalog_since(version, (_vector_field(space),))
        if not ids:
            return [], np.zeros((0, 0), np.float32), version
        return ids, stack_vectors([v[0] for v in values])[0], version

    def item_inputs(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = list(item_ids)
        values = self._per_item(ids, lambda pipe, key: pipe.hmget(key, ("id_index", "embedding")))
        return np.fromiter((int(v[0] or 0) for v in values), np.int64, count=len(ids)), stack_blobs([v[1] for v in values])

    def item_texts(self, item_ids: Sequence[str]) -> dict[str, str]:
        ids = list(item_ids)
        values = self._per_item(ids, lambda pipe, key: pipe.hget(key, "text"))
        return {i: v.decode() for i, v in zip(ids, values) if v is not None}

    def item_id_indices(self, item_ids: Sequence[str]) -> dict[str, int]:
        ids = list(item_ids)
        out: dict[str, int] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            values = self._call(lambda chunk=chunk: self._node(self.k_idx).hmget(self.k_idx, chunk), retry=True)
            out.update({i: int(v) for i, v in zip(chunk, values) if v is not None})
        return out

    def popular_items(self, limit: int, window: int) -> list[tuple[str, float]]:
        if int(limit) <= 0 or int(window) <= 0:
            return []
        recent = self._call(lambda: self._node(self.k_recent).lrange(self.k_recent, 0, min(int(window), self.window) - 1), retry=True)
        counts = Counter(_recent_item(x.decode()) for x in recent)
        known = self.item_id_indices(list(counts))
        ranked = sorted(((i, n) for i, n in counts.items() if i in known), key=lambda x: (-x[1], x[0]))
        return [(i, float(n)) for i, n in ranked[: int(limit)]]

    def count_items(self) -> int:
        return int(self._call(lambda: self._node(self.k_cat).zcard(self.k_cat), retry=True))

    def vector_spaces(self) -> dict[int, int]:
        """Reads every item's vector fields (1,000 items per round trip): for tools."""
        spaces = sorted(int(s) for s in self._call(lambda: self._node(self.k_spaces).smembers(self.k_spaces), retry=True))

        def lengths(pipe, key: str) -> None:
            pipe.hstrlen(key, "vector")
            for space in spaces:
                pipe.hexists(key, f"vector:{space}")

        replies = self._per_item(self._all_ids(), lengths)
        width = 1 + len(spaces)
        counts = {1: sum(1 for n in replies[0::width] if n)}
        counts.update({space: sum(1 for x in replies[1 + j :: width] if x) for j, space in enumerate(spaces)})
        return {space: n for space, n in counts.items() if n}

    # -- for tools: every user, found by scanning each primary (never on a request path) ------
    def _users(self) -> list[str]:
        head, tail = len(self.prefix) + 3, len("}:ev")
        pattern = _glob_escape(self.prefix) + "{u:*}:ev"

        def scan() -> list[str]:
            return [k.decode()[head:-tail] for node in self._primaries() for k in node.scan_iter(match=pattern, count=1000)]

        return self._call(scan, retry=True)

    def _per_user(self, users: list[str], command: Callable[[Any, str], Any]) -> Iterator[tuple[str, Any]]:
        """(user, reply of `command(pipe, <user's events key>)`) for every user: one pipeline per
        node and 1000 users (tools' scans)."""
        for group in self._by_node(users).values():
            for start in range(0, len(group), 1000):
                chunk = group[start : start + 1000]

                def read(chunk=chunk):
                    with self._node(self._user_keys(chunk[0])[0]).pipeline(transaction=False) as pipe:
                        for user in chunk:
                            command(pipe, self._user_keys(user)[0])
                        return pipe.execute()

                yield from zip(chunk, self._call(read, retry=True))

    def _user_rows(self) -> list[tuple[int, str, list]]:
        """(arrival number, user, [item_id, event_type, timestamp, value, event_id]) of every event, in arrival order."""
        rows: list[tuple[int, str, list]] = []
        for user, members in self._per_user(self._users(), lambda pipe, key: pipe.zrange(key, 0, -1)):
            for m in members:
                seq, payload = m.split(b"|", 1)
                rows.append((int(seq), user, json.loads(payload)))
        rows.sort(key=lambda r: r[0])
        return rows

    def count_events(self) -> int:
        """ZCARD of every user's events (for tools: it scans the key space)."""
        return sum(n for _, n in self._per_user(self._users(), lambda pipe, key: pipe.zcard(key)))

    def user_ids(self) -> list[str]:
        first: dict[str, int] = {}
        for seq, user, _ in self._user_rows():
            first.setdefault(user, seq)
        return list(first)

    def last_arrival(self) -> int:
        """The arrival counter, once every number it has handed out is written or refused: waits
        up to `lease` + 250 ms after the latest reservation."""
        node_key = self.k_seq

        def read():
            with self._node(node_key).pipeline(transaction=False) as pipe:
                pipe.mget(self.k_seq, self.k_reserved)
                pipe.time()
                return pipe.execute()

        (seq, reserved), (sec, usec) = self._call(read, retry=True)
        wait = (int(reserved or 0) + (self.lease_s + CLOCK_SKEW_S) * 1000.0 - (sec * 1000.0 + usec / 1000.0)) / 1000.0
        if wait > 0:
            time.sleep(wait)
        return int(seq or 0)

    def events(self) -> Iterator[Event]:
        return (_event(user, r) for _, user, r in self._user_rows())

    def numbered_events(self) -> Iterator[tuple[int, Event]]:
        """Every event numbered up to `last_arrival()` (read first: an event numbered above it
        may still be in flight and belongs to the next reader), in arrival order."""
        horizon = self.last_arrival()
        return ((seq, _event(user, r)) for seq, user, r in self._user_rows() if seq <= horizon)

    def load_items(self, batches: Iterable[Sequence[Item]], space: int = 1) -> int:
        """One upsert script per batch: every write is already durable when it returns (AOF)."""
        return sum(self.upsert_items(batch, space) for batch in batches)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _event(user: str, r: list) -> Event:
    return Event(user, r[0], r[1], float(r[2]), math.nan if r[3] is None else float(r[3]), r[4] if len(r) > 4 else None)
