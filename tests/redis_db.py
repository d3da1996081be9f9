"""A Redis database of this test session's own, so that two sessions on one machine (two
``make test`` runs, a test run beside ``make bench``) never flush or read each other's keys.

Database 0 holds one claim per database (``dmd:test-session:db<n>`` = ``<host>:<pid>``); a
session takes the first database nobody holds, or whose holder's process is gone, and
gives it back at exit. Pub/sub does not cross databases here: kombu prefixes its fanout
channels with the database number.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit, urlunsplit

import redis

#: Databases a test session may take: not 0 (the local default, and where claims live), not 12
#: (the benchmarks' own, which they flush).
CANDIDATES = tuple(n for n in range(1, 16) if n != 12)
CLAIM_SECONDS = 6 * 3600

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


def _alive(holder: str) -> bool:
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's session (a shared Redis): assume it is running
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def claim(base_url: str) -> tuple[str, int]:
    """(URL of a database of this session's own, its number); raise if every candidate is held.

    With no Redis answering yet (the local stack will start one), database 11 is taken unclaimed.
    """
    me = f"{socket.gethostname()}:{os.getpid()}"
    client = redis.Redis.from_url(_with_db(base_url, 0), socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        return _with_db(base_url, 11), 11
    for db in CANDIDATES:
        key = f"dmd:test-session:db{db}"
        if client.set(key, me, nx=True, ex=CLAIM_SECONDS):
            return _with_db(base_url, db), db
        holder = client.get(key)
        dead = holder is not None and not _alive(holder.decode())  # type: ignore[union-attr]
        if dead and client.eval(_TAKE_OVER, 1, key, holder, me, CLAIM_SECONDS):  # type: ignore[arg-type]
            return _with_db(base_url, db), db
    raise RuntimeError(f"every Redis database {CANDIDATES} is held by a running test session")


def release(base_url: str, db: int) -> None:
    """Give the database back (only if this process still holds it)."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    client = redis.Redis.from_url(_with_db(base_url, 0), socket_timeout=5)
    key = f"dmd:test-session:db{db}"
    try:
        if client.get(key) == me.encode():
            client.delete(key)
    except redis.exceptions.ConnectionError:
        pass  # the Redis this session started is gone with it
