"""The Redis engine: one log shared by a fleet of replicas (``ADRANK_LOG=redis://HOST:PORT/DB``).

Keys (prefix ``KEY``, default ``adrank``)::

    KEY:log   a stream; entry ids are ``<pos>-0`` with pos drawn from KEY:seq, fields k, b, c
    KEY:seq   the last position handed out (INCR)
    KEY:ads   the snapshot's catalog: a hash id -> features JSON
    KEY:meta  a hash: pos (of the snapshot), models, boot (JSON)

``append`` is one Lua script (atomic on the server: positions are gap-free in commit order, and
the start-up intent's compare-and-set happens in the same step).  Followers block in ``XREAD``,
so an entry reaches every replica within a round trip.  ``compact`` folds entries into the
snapshot hash and trims the stream in a MULTI/EXEC guarded by WATCH on KEY:meta.

Durability is Redis's: an entry is acknowledged once Redis has it, and survives a Redis restart as
its persistence settings say (the compose file and the manifests run it with ``appendonly yes``
and ``appendfsync always``: every write fsync'd before Redis answers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import msgspec

from service.replog.entries import COMPACT_ADS, Entry, LogError, State, changes, decode, encode

log = logging.getLogger("adrank.replog")

_APPEND = """
if ARGV[1] == "1" then
  local cur = redis.call('HGET', KEYS[3], 'boot')
  if (cur or '') ~= ARGV[2] then return false end
  redis.call('HSET', KEYS[3], 'boot', ARGV[3])
end
local out = {}
for i = 4, #ARGV, 3 do
  local s = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], s .. '-0', 'k', ARGV[i], 'b', ARGV[i + 1], 'c', ARGV[i + 2])
  out[#out + 1] = s
end
return out
"""


def _json(raw):
    return None if raw is None else msgspec.json.decode(raw)


class RedisLog:
    name = "redis"

    def __init__(self, url: str, key: str = "adrank"):
        import redis

        self._errors = (redis.exceptions.RedisError, OSError)
        self._watch_error = redis.exceptions.WatchError
        self.url = url
        self.r: Any = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
        self.keys = {n: f"{key}:{n}" for n in ("log", "seq", "ads", "meta")}
        try:
            self._append = self.r.register_script(_APPEND)
            self.r.ping()
            self._check_persistence()
        except self._errors as exc:
            raise LogError(f"redis log {url}: {exc}") from None

    def _check_persistence(self) -> None:
        try:
            aof = self.r.config_get("appendonly").get("appendonly")
            fsync = self.r.config_get("appendfsync").get("appendfsync")
        except self._errors:  # CONFIG may be disabled (managed Redis): nothing to check
            return
        if aof != "yes" or fsync != "always":
            log.warning("redis %s runs with appendonly=%s appendfsync=%s: an acknowledged write survives "
                        "a Redis crash only with appendonly yes + appendfsync always", self.url, aof, fsync)

    def append(self, entries, boot=None):
        argv: list[Any] = ["0", "", ""]
        if boot is not None:
            expected, new = boot
            argv = ["1", "" if expected is None else msgspec.json.encode(expected), msgspec.json.encode(new)]
        for kind, data in entries:
            argv.extend(encode(kind, data))
        k = self.keys
        try:
            out = self._append(keys=[k["log"], k["seq"], k["meta"]], args=argv)
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: append failed: {exc}") from None
        return None if out is None else [int(p) for p in out]

    def read(self, after: int, limit: int = 1000, block: float = 0.0) -> list[Entry]:
        try:
            if block > 0:
                got = self.r.xread({self.keys["log"]: f"{after}-0"}, count=limit, block=max(1, int(block * 1000)))
                rows = got[0][1] if got else []
            else:
                rows = self.r.xrange(self.keys["log"], f"({after}-0", "+", count=limit)
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: read failed: {exc}") from None
        return [self._entry(i, f) for i, f in rows]

    @staticmethod
    def _entry(stream_id, fields) -> Entry:
        pos = int(stream_id.split(b"-")[0])
        kind = fields.get(b"k", b"").decode("utf-8", "replace")
        return decode(pos, kind, fields.get(b"b"), fields.get(b"c"))

    def head(self) -> int:
        try:
            return int(self.r.get(self.keys["seq"]) or 0)
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: {exc}") from None

    def backlog(self) -> int:
        try:
            return int(self.r.xlen(self.keys["log"]))
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: {exc}") from None

    def meta(self) -> State:
        """The snapshot's state without its ads."""
        try:
            return self._meta()
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: {exc}") from None

    def _meta(self) -> State:
        pos, models, boot = self.r.hmget(self.keys["meta"], ["pos", "models", "boot"])
        return State(pos=int(pos or 0), models=_json(models) or {}, boot=_json(boot))

    def snapshot(self) -> tuple[State, Iterator[tuple[str, bytes]] | None]:
        """The hash read in pages; read again if a compaction moved the snapshot meanwhile."""
        try:
            for _ in range(20):
                state = self._meta()
                ads = [(i.decode(), f) for i, f in self.r.hscan_iter(self.keys["ads"], count=10_000)]
                if int(self.r.hget(self.keys["meta"], "pos") or 0) == state.pos:
                    return state, iter(ads)
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: snapshot read failed: {exc}") from None
        raise LogError(f"redis log {self.url}: the snapshot kept moving while it was read")

    def compact(self, max_entries: int = 1000, max_ads: int = COMPACT_ADS) -> int:
        """Fold up to ``max_entries`` entries, about ``max_ads`` ads (at least one entry), into the
        snapshot hash in one MULTI/EXEC: Redis runs a transaction alone, so each stays small."""
        k = self.keys
        try:
            with self.r.pipeline() as p:
                p.watch(k["meta"])
                pos, models = p.hmget(k["meta"], ["pos", "models"])
                pos, models = int(pos or 0), _json(models) or {}
                rows = p.xrange(k["log"], f"({pos}-0", "+", count=max_entries)
                if not rows:
                    p.unwatch()
                    return 0
                entries: list[Entry] = []
                n_ads = 0
                for i, f in rows:
                    if entries and n_ads >= max_ads:
                        break
                    e = self._entry(i, f)
                    entries.append(e)
                    n_ads += len(e.data.get("ads") or e.data.get("ids") or []) if e.data else 0
                ads = changes(entries, models)
                new_pos = entries[-1].pos
                p.multi()
                put = {i: f for i, f in ads.items() if f is not None}
                gone = [i for i, f in ads.items() if f is None]
                if put:
                    p.hset(k["ads"], mapping=put)
                if gone:
                    p.hdel(k["ads"], *gone)
                p.hset(k["meta"], mapping={"pos": new_pos, "models": msgspec.json.encode(models)})
                p.xtrim(k["log"], minid=f"{new_pos + 1}-0", approximate=False)
                p.execute()
                return len(entries)
        except self._watch_error:
            return 0  # another replica compacted at the same time
        except self._errors as exc:
            raise LogError(f"redis log {self.url}: compaction failed: {exc}") from None

    def close(self) -> None:
        self.r.close()
