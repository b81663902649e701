"""Redis state store: one store shared by every tritonserver (replica) that points at it.

Same contract as the SQLite store (see `freshrec.store.base`):

- Durable acknowledgement: on a server run with `appendonly yes` + `appendfsync always`, Redis
  fsyncs the AOF before it replies, so a write that returned is on disk. (Redis 7.0 has no
  WAITAOF; the store warns at open if the server it reaches is not configured that way.)
- Every write is one Lua script, atomic on the server: an event retried with the same `event_id`
  is stored once even when two replicas race; the catalog version is INCRemented in the same
  script that writes the items, so `items_since(v)` on any replica returns exactly the items
  written after `v`.
- Any connection error, timeout, or a server that is loading / out of disk / read-only raises
  `StoreUnavailable` (gRPC UNAVAILABLE) within about the socket timeout (1 s by default).

URL: `redis://[[user]:password@]host:port/db?prefix=freshrec:&timeout=1&window=10000`
(`rediss://` for TLS). `prefix` namespaces every key; `timeout` is the socket connect and read
timeout in seconds; `window` is how many latest events are kept for `popular_items` (a window
asked for beyond it is served from what is kept). Other query options go to redis-py.

Keys (P = prefix):
  P ev:seq        counter: arrival number of the newest event ever stored (`last_arrival`)
  P ev:gone       counter: events removed by `forget_user` (`count_events` = ev:seq - ev:gone)
  P ev:ids        set of stored event ids (idempotency); a forgotten user's stay (retries stay duplicates)
  P u:<user>:ev   sorted set of a user's events: score = timestamp, member = "<seq 16 digits>|json"
                  (json: [item_id, event_type, timestamp, value or null, event_id or null])
                  (equal timestamps order by arrival seq, as SQLite's ORDER BY ts, seq)
  P u:<user>:seen set of every item the user interacted with
  P ev:recent     list of the latest `window` events, newest first, as "<seq 16 digits>|item_id"
                  (entries written before forget_user existed are a bare item_id)
  P users         sorted set user_id -> arrival seq of the user's first event (tools' user list)
  P cat:version   counter: catalog version
  P cat:items     sorted set item_id -> version of its last write
  P cat:idx       hash item_id -> id_index (known items)
  P cat:spaces    set of the vector spaces >= 2 written since their last `drop_vectors` (an upsert
                  into another space may have emptied one: `vector_spaces` counts what is there)
  P item:<id>     hash text, metadata, id_index, vector, content, embedding, topics (float32 bytes; empty:
                  none), version, and vector:<space> per space >= 2 holding a vector of the item
                  (`vector` is vector space 1; empty: missing)
"""

from __future__ import annotations

import json
import logging
import math
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
_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "READONLY", "BUSY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")

# KEYS: ev:ids, ev:seq, ev:recent, users, then (u:<user>:ev, u:<user>:seen) per event.
# ARGV: window, then (event_id or "", item_id, payload json, timestamp, user_id) per event.
_ADD_EVENTS = """
local n = 0
local count = (#KEYS - 4) / 2
for i = 1, count do
  local a = 1 + (i - 1) * 5
  local eid = ARGV[a + 1]
  local new = true
  if eid ~= '' then new = redis.call('SADD', KEYS[1], eid) == 1 end
  if new then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[3 + 2 * i], ARGV[a + 4], string.format('%016d', seq) .. '|' .. ARGV[a + 3])
    redis.call('SADD', KEYS[4 + 2 * i], ARGV[a + 2])
    redis.call('LPUSH', KEYS[3], string.format('%016d', seq) .. '|' .. ARGV[a + 2])
    redis.call('ZADD', KEYS[4], 'NX', seq, ARGV[a + 5])
    n = n + 1
  end
end
if n > 0 then redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1) end
return n
"""

# KEYS: u:<user>:ev, u:<user>:seen, users, ev:recent, ev:gone. ARGV: user_id.
# The user's events, seen set, first-arrival entry and popularity-window entries go; their event
# ids stay in ev:ids. Returns how many events were removed.
_FORGET_USER = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = #members
if n > 0 then
  local drop = {}
  for i = 1, n do
    local m = members[i]
    local bar = string.find(m, '|', 1, true)
    drop[string.sub(m, 1, bar) .. cjson.decode(string.sub(m, bar + 1))[1]] = true
  end
  local recent = redis.call('LRANGE', KEYS[4], 0, -1)
  local keep, dropped = {}, false
  for i = 1, #recent do
    if drop[recent[i]] then dropped = true else keep[#keep + 1] = recent[i] end
  end
  if dropped then
    redis.call('DEL', KEYS[4])
    for i = 1, #keep, 1000 do
      redis.call('RPUSH', KEYS[4], unpack(keep, i, math.min(i + 999, #keep)))
    end
  end
  redis.call('INCRBY', KEYS[5], n)
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""

# KEYS: cat:version, cat:items, cat:idx, cat:spaces, then item:<id> per item.
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

# KEYS: cat:spaces, then item:<id> per item. ARGV: space, then a vector per item.
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

# KEYS: cat:idx, then item:<id> per item. ARGV: (item_id, id_index) per item.
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


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Splits freshrec's own query options off the URL; the rest stays for redis-py."""
    parts = urlsplit(url)
    ours, theirs = {}, []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in ("prefix", "timeout", "window"):
            ours[k] = v
        else:
            theirs.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _fmt_float(x: float) -> str:
    return repr(float(x))


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


class RedisStore:
    def __init__(self, url: str, *, prefix: str | None = None, timeout_s: float | None = None, window: int | None = None) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis
        client_url, opts = _parse_url(url)
        self.prefix = prefix if prefix is not None else opts.get("prefix", DEFAULT_PREFIX)
        self.timeout_s = float(timeout_s if timeout_s is not None else opts.get("timeout", DEFAULT_TIMEOUT_S))
        self.window = int(window if window is not None else opts.get("window", DEFAULT_WINDOW))
        if self.window < 1 or not self.timeout_s > 0:
            raise ValueError(f"invalid redis store options in {url!r}")
        # No retries inside redis-py: a timed-out write may have been applied, and retrying an
        # event without an event_id would store it twice. `_call` retries once itself, only
        # where that is safe (reads, idempotent writes) and only on a broken connection.
        self.db = redis.Redis.from_url(
            client_url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._add_events = self.db.register_script(_ADD_EVENTS)
        self._upsert_items = self.db.register_script(_UPSERT_ITEMS)
        self._put_vectors = self.db.register_script(_PUT_VECTORS)
        self._assign_id_rows = self.db.register_script(_ASSIGN_ID_ROWS)
        self._forget_user = self.db.register_script(_FORGET_USER)
        p = self.prefix
        self.k_ev_ids, self.k_ev_seq, self.k_recent, self.k_users = p + "ev:ids", p + "ev:seq", p + "ev:recent", p + "users"
        self.k_ev_gone = p + "ev:gone"
        self.k_version, self.k_cat, self.k_idx, self.k_spaces = p + "cat:version", p + "cat:items", p + "cat:idx", p + "cat:spaces"
        try:  # reach the server now so a wrong URL fails at load, not at the first request
            self._call(self.db.ping, retry=True)
        except StoreUnavailable:
            log.warning("redis state store %s not reachable yet; requests fail as UNAVAILABLE until it is", self._safe_url(url))
        else:
            self._check_durability()

    @staticmethod
    def _safe_url(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query=""))

    def _check_durability(self) -> None:
        """Warns when the server would acknowledge writes before they are on disk."""
        try:
            cfg = self.db.config_get("append*")
        except self._redis.RedisError:  # CONFIG disabled (managed Redis): nothing to check
            return
        if cfg.get(b"appendonly", cfg.get("appendonly")) not in (b"yes", "yes") or cfg.get(
            b"appendfsync", cfg.get("appendfsync")
        ) not in (b"always", "always"):
            log.warning("redis state store: the server is not run with appendonly yes + appendfsync always; "
                        "acknowledged writes may be lost on a crash")  # fmt: skip

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], retry: bool) -> Any:
        r = self._redis
        for attempt in (0, 1):
            try:
                return fn()
            except r.TimeoutError as e:  # the server may have applied it: never retried
                raise StoreUnavailable(f"state store timed out: {e}") from e
            except r.ConnectionError as e:  # includes BusyLoadingError (LOADING)
                if isinstance(e, r.BusyLoadingError) or not retry or attempt:
                    raise StoreUnavailable(f"state store unreachable: {e}") from e
                # A pooled connection broken by a server restart: one fresh try.
            except r.ResponseError as e:
                if str(e).split(" ", 1)[0].upper() in _UNAVAILABLE_REPLIES or isinstance(e, r.ReadOnlyError):
                    raise StoreUnavailable(f"state store did not accept the request: {e}") from e
                raise
        raise AssertionError("unreachable")

    def _item_key(self, item_id: str) -> str:
        return self.prefix + "item:" + item_id

    def _user_keys(self, user_id: str) -> tuple[str, str]:
        base = f"{self.prefix}u:{user_id}:"
        return base + "ev", base + "seen"

    # -- writes -----------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> int:
        events = list(events)
        if not events:
            return 0
        keys = [self.k_ev_ids, self.k_ev_seq, self.k_recent, self.k_users]
        args: list[Any] = [self.window]
        for e in events:
            ts = float(e.timestamp)
            value = None if math.isnan(e.value) else float(e.value)
            keys.extend(self._user_keys(e.user_id))
            payload = json.dumps([e.item_id, e.event_type, ts, value, e.event_id], separators=(",", ":"))
            args.extend([e.event_id or "", e.item_id, payload, _fmt_float(ts), e.user_id])
        # Retrying is safe only when every event carries an id (the retry is then recognised).
        idempotent = all(e.event_id for e in events)
        return int(self._call(lambda: self._add_events(keys=keys, args=args), retry=idempotent))

    def forget_user(self, user_id: str) -> int:
        """One script (atomic; durable when it returns on an `appendfsync always` server). The AOF
        keeps the removed events' earlier commands until Redis rewrites it (BGREWRITEAOF)."""
        keys = [*self._user_keys(user_id), self.k_users, self.k_recent, self.k_ev_gone]
        # A repeat removes nothing and changes nothing: safe to retry.
        return int(self._call(lambda: self._forget_user(keys=keys, args=[user_id]), retry=True))

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
        self._call(lambda: self._upsert_items(keys=keys, args=args), retry=True)
        return len(items)

    def put_vectors(self, space: int, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """One script per 1,000 items (each durable when it returns)."""
        space = check_space(space)
        ids, vectors = check_vectors(item_ids, vectors)
        n = 0
        for start in range(0, len(ids), 1000):
            keys = [self.k_spaces] + [self._item_key(i) for i in ids[start : start + 1000]]
            args = [str(space)] + [v.tobytes() for v in vectors[start : start + 1000]]
            n += int(self._call(lambda keys=keys, args=args: self._put_vectors(keys=keys, args=args), retry=True))  # idempotent
        return n

    def drop_vectors(self, space: int) -> int:
        """HDEL over every item, 1,000 per pipeline, then the space leaves cat:spaces."""
        if check_space(space) == 1:
            raise ValueError("vector space 1 cannot be dropped (it holds the vectors of `freshrec build`)")
        field = f"vector:{int(space)}"
        n = sum(self._per_item(self._all_ids(), lambda pipe, key: pipe.hdel(key, field)))
        self._call(lambda: self.db.srem(self.k_spaces, str(int(space))), retry=True)
        return n

    def assign_id_rows(self, rows: Mapping[str, int]) -> int:
        """One script per 1,000 items (each durable when it returns)."""
        pairs, n = list(rows.items()), 0
        for start in range(0, len(pairs), 1000):
            chunk = pairs[start : start + 1000]
            keys = [self.k_idx] + [self._item_key(i) for i, _ in chunk]
            args = [x for i, r in chunk for x in (i, int(r))]
            n += int(self._call(lambda keys=keys, args=args: self._assign_id_rows(keys=keys, args=args), retry=True))  # idempotent
        return n

    # -- reads ------------------------------------------------------------------------------
    def user_history(self, user_id: str, limit: int) -> UserHistory:
        if int(limit) <= 0:
            rows: list[bytes] = []
            seen = self._call(lambda: self.db.smembers(self._user_keys(user_id)[1]), retry=True)
        else:
            k_ev, k_seen = self._user_keys(user_id)

            def read():
                with self.db.pipeline(transaction=True) as pipe:  # one snapshot: MULTI/EXEC
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

    def _per_item(self, ids: list[str], command: Callable[[Any, str], Any]) -> list:
        """`command(pipe, item key)` for every id, 1,000 per pipeline (a read, or an idempotent
        write: retried once on a broken connection); the replies in order."""
        out: list = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]

            def run(chunk=chunk):
                with self.db.pipeline(transaction=False) as pipe:
                    for item_id in chunk:
                        command(pipe, self._item_key(item_id))
                    return pipe.execute()

            out += self._call(run, retry=True)
        return out

    def _all_ids(self) -> list[str]:
        return [i.decode() for i in self._call(lambda: self.db.zrange(self.k_cat, 0, -1), retry=True)]

    def _catalog_since(self, version: int, fields: tuple[str, ...]) -> tuple[list[str], list[list[bytes]], int]:
        """Ids written after `version` (version order), the given hash fields of each, and the version."""
        # The version is INCRemented in the script that writes the items, so this snapshot of
        # cat:items holds every item written up to the highest version it shows; the result's
        # version is that highest version, never the counter (which may already be further).
        # An item rewritten since the snapshot carries its newer content (and comes again at the
        # next refresh): never older than its version here.
        rows = self._call(
            lambda: self.db.zrangebyscore(self.k_cat, f"({int(version)}", "+inf", withscores=True), retry=True
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
            values = self._call(lambda chunk=chunk: self.db.hmget(self.k_idx, chunk), retry=True)
            out.update({i: int(v) for i, v in zip(chunk, values) if v is not None})
        return out

    def popular_items(self, limit: int, window: int) -> list[tuple[str, float]]:
        if int(limit) <= 0 or int(window) <= 0:
            return []
        recent = self._call(lambda: self.db.lrange(self.k_recent, 0, min(int(window), self.window) - 1), retry=True)
        counts = Counter(_recent_item(x.decode()) for x in recent)
        known = self.item_id_indices(list(counts))
        ranked = sorted(((i, n) for i, n in counts.items() if i in known), key=lambda x: (-x[1], x[0]))
        return [(i, float(n)) for i, n in ranked[: int(limit)]]

    def count_events(self) -> int:
        seq, gone = self._call(lambda: self.db.mget(self.k_ev_seq, self.k_ev_gone), retry=True)
        return int(seq or 0) - int(gone or 0)

    def last_arrival(self) -> int:
        return int(self._call(lambda: self.db.get(self.k_ev_seq), retry=True) or 0)

    def count_items(self) -> int:
        return int(self._call(lambda: self.db.zcard(self.k_cat), retry=True))

    def vector_spaces(self) -> dict[int, int]:
        """Reads every item's vector fields (1,000 items per round trip): for tools."""
        spaces = sorted(int(s) for s in self._call(lambda: self.db.smembers(self.k_spaces), retry=True))

        def lengths(pipe, key: str) -> None:
            pipe.hstrlen(key, "vector")
            for space in spaces:
                pipe.hexists(key, f"vector:{space}")

        replies = self._per_item(self._all_ids(), lengths)
        width = 1 + len(spaces)
        counts = {1: sum(1 for n in replies[0::width] if n)}
        counts.update({space: sum(1 for x in replies[1 + j :: width] if x) for j, space in enumerate(spaces)})
        return {space: n for space, n in counts.items() if n}

    # -- for tools --------------------------------------------------------------------------
    def user_ids(self) -> list[str]:
        return [u.decode() for u in self._call(lambda: self.db.zrange(self.k_users, 0, -1), retry=True)]

    def events(self) -> Iterator[Event]:
        return (e for _, e in self.numbered_events())

    def numbered_events(self) -> Iterator[tuple[int, Event]]:
        """Reads every user's events (1,000 users per round trip) and yields them in arrival order."""
        rows: list[tuple[bytes, str, list]] = []
        users = self.user_ids()
        for start in range(0, len(users), 1000):
            chunk = users[start : start + 1000]

            def read(chunk=chunk):
                with self.db.pipeline(transaction=False) as pipe:
                    for user in chunk:
                        pipe.zrange(self._user_keys(user)[0], 0, -1)
                    return pipe.execute()

            for user, members in zip(chunk, self._call(read, retry=True)):
                for m in members:
                    seq, payload = m.split(b"|", 1)
                    rows.append((seq, user, json.loads(payload)))
        rows.sort(key=lambda r: r[0])
        for seq, user, r in rows:
            yield int(seq), Event(user, r[0], r[1], float(r[2]), math.nan if r[3] is None else float(r[3]), r[4] if len(r) > 4 else None)

    def load_items(self, batches: Iterable[Sequence[Item]], space: int = 1) -> int:
        """One upsert script per batch: every write is already durable when it returns (AOF)."""
        return sum(self.upsert_items(batch, space) for batch in batches)

    def close(self) -> None:
        self.db.close()
