"""A TCP proxy that can damage the connection to a dependency on demand (stdlib only).

Point a process at ``proxy.url_for(url)`` instead of ``url`` and the proxy forwards its bytes
to the real server until told otherwise:

- ``freeze()``: a hung dependency. Every connection, existing and new, stays open, but no byte
  crosses in either direction (what was read before stays held). Connects still succeed.
- ``cut()``: an unreachable dependency. Every connection is closed at once and new connects are
  refused (the listening socket is closed) until ``heal()``.
- ``slow(seconds)``: a slow dependency (a throttled table, a hot partition). Every request a
  client sends reaches the server ``seconds`` late: what the client sends after the server last
  answered on that connection (a request, for a request-response protocol) is held once, however
  many reads its bytes take. (Holding every read made a 60 kB batch request several times later
  than a small one, which a throttled table does not do.)
- ``heal()``: forwarding as normal again, at full speed. Connections held by a freeze carry on
  where they stopped, unless a peer gave up on them meanwhile. After a cut, the proxy listens again
  on the same port.
- ``close()``: stop for good.

The proxy listens on a free port of 127.0.0.1 (``.port``); damage goes through it, never to
the real server.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

State = Literal["open", "frozen", "cut", "closed"]
_CHUNK = 65536


def _close_listener(listener: socket.socket) -> None:
    """Stop listening now: shut down first, for a thread in select() on it holds the socket open."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


class _Link:
    """One proxied connection: the client's socket and the upstream socket, closed together."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        #: the server answered since the client last sent: what the client sends next is a new request
        self.answered = True
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forwards TCP connections from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._cond = threading.Condition()
        self._state: State = "open"
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = self._listen(port)
        self.port: int = int(self._listener.getsockname()[1])
        #: connections accepted (and forwarded or held) since the start
        self.accepted = 0
        #: how late each request from a client is forwarded (``slow``)
        self.delay = 0.0
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._acceptor.start()

    # --- the controls -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._cond:
            return len(self._links)

    def freeze(self) -> None:
        with self._cond:
            self._require_running()
            if self._state == "cut":
                self._listener = self._listen(self.port)
            self._state = "frozen"
            self._cond.notify_all()

    def cut(self) -> None:
        with self._cond:
            self._require_running()
            self._state = "cut"
            listener, self._listener = self._listener, None
            links = list(self._links)
            self._cond.notify_all()
        if listener is not None:
            _close_listener(listener)
        for link in links:
            link.close()

    def slow(self, seconds: float) -> None:
        with self._cond:
            self._require_running()
            if self._state == "cut":
                self._listener = self._listen(self.port)
            self._state = "open"
            self.delay = seconds
            self._cond.notify_all()

    def heal(self) -> None:
        with self._cond:
            self._require_running()
            if self._state == "cut":
                self._listener = self._listen(self.port)
            self._state = "open"
            self.delay = 0.0
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._state == "closed":
                return
            self._state = "closed"
            listener, self._listener = self._listener, None
            links = list(self._links)
            self._cond.notify_all()
        if listener is not None:
            _close_listener(listener)
        for link in links:
            link.close()
        self._acceptor.join(timeout=5)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (scheme, credentials, path kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.host}:{self.port}" if userinfo else f"{self.host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the machinery ------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._state == "closed":
            raise RuntimeError("the proxy is closed")

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(128)
        return listener

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                while self._state == "cut":
                    self._cond.wait()
                if self._state == "closed":
                    return
                listener = self._listener
            if listener is None:
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed by cut() or close()
            threading.Thread(target=self._open_link, args=(client,), daemon=True).start()

    def _open_link(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream)
        with self._cond:
            if self._state in ("cut", "closed"):
                link.close()
                return
            self._links.add(link)
            self.accepted += 1
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _flowing(self, link: _Link) -> bool:
        """Wait out a freeze; False when the link is to be dropped instead."""
        with self._cond:
            while self._state == "frozen" and not link.closed:
                self._cond.wait()
            return self._state == "open" and not link.closed

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._flowing(link):
                data = src.recv(_CHUNK)
                if data and src is link.client:
                    if link.answered and self.delay > 0:  # a new request: held once
                        time.sleep(self.delay)
                    link.answered = False
                elif data:
                    link.answered = True
                if not data or not self._flowing(link):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.close()
            with self._cond:
                self._links.discard(link)
