"""The chaos suite's fault proxy (tests/chaos/proxy.py) against a local echo server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import FaultProxy
from tests.helpers import wait_until


class EchoServer:
    """Echoes every byte back, one thread per connection, until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def proxy() -> Iterator[FaultProxy]:
    echo = EchoServer()
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p
    echo.close()


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end closed (end of stream) or reset the connection."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
    assert proxy.accepted == 1


def test_slow_delays_each_request_and_heal_restores_full_speed(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.slow(0.3)
        began = time.monotonic()
        assert roundtrip(sock, b"ping") == b"ping"
        assert roundtrip(sock, b"ping") == b"ping"
        assert time.monotonic() - began >= 0.6  # each request 300 ms late
        proxy.heal()
        began = time.monotonic()
        assert roundtrip(sock, b"ping") == b"ping"
        assert time.monotonic() - began < 0.2


class AnsweringServer(EchoServer):
    """Answers ``ok`` once a whole request of ``SIZE`` bytes has arrived (request, then response)."""

    SIZE = 1_000_000

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    got = 0
                    while got < AnsweringServer.SIZE:
                        data = conn.recv(65536)
                        if not data:
                            return
                        got += len(data)
                    conn.sendall(b"ok")
            except OSError:
                pass


@pytest.mark.stack  # a server of its own, on a socket
def test_slow_delays_a_large_request_once_not_each_read_of_it() -> None:
    # a 1 MB request reaches the proxy in many reads; a slow dependency makes each request late once
    server = AnsweringServer()
    with FaultProxy("127.0.0.1", server.port) as proxy, connect(proxy, timeout=5.0) as sock:
        proxy.slow(0.3)
        for _ in range(2):
            began = time.monotonic()
            sock.sendall(b"x" * AnsweringServer.SIZE)
            assert sock.recv(16) == b"ok"
            assert 0.3 <= time.monotonic() - began < 0.6
    server.close()


def test_freeze_holds_bytes_and_heal_delivers_them(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.freeze()
        sock.settimeout(0.5)
        sock.sendall(b"during")
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        with connect(proxy, timeout=0.5) as fresh:  # a new connection opens, and hangs too
            fresh.sendall(b"new")
            with pytest.raises(TimeoutError):
                fresh.recv(4096)
            proxy.heal()
            fresh.settimeout(2)
            assert fresh.recv(4096) == b"new"
        sock.settimeout(2)
        assert sock.recv(4096) == b"during"
        assert roundtrip(sock, b"after") == b"after"


def test_cut_closes_connections_and_refuses_new_ones_until_healed(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    assert roundtrip(sock, b"ping") == b"ping"
    proxy.cut()
    with sock:
        assert closed_by_peer(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy, timeout=0.5)
    wait_until(lambda: proxy.connections == 0, timeout=2, what="the cut connection to be dropped")
    proxy.heal()
    with connect(proxy) as again:
        assert roundtrip(again, b"back") == b"back"


def test_cut_while_frozen_drops_the_held_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.freeze()
        sock.sendall(b"held")
        proxy.cut()
        assert closed_by_peer(sock)
    proxy.heal()
    with connect(proxy) as again:
        assert roundtrip(again, b"ok") == b"ok"


def test_url_for_keeps_scheme_credentials_and_path(proxy: FaultProxy) -> None:
    assert proxy.url_for("redis://127.0.0.1:6379/7") == f"redis://127.0.0.1:{proxy.port}/7"
    assert proxy.url_for("http://u:p@localhost:5000") == f"http://u:p@127.0.0.1:{proxy.port}"


def test_close_stops_listening(proxy: FaultProxy) -> None:
    proxy.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy, timeout=0.5)
    with pytest.raises(RuntimeError):
        proxy.freeze()
