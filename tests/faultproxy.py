"""A TCP proxy in front of a real service, for outage tests (the Toxiproxy idea, in-process).

Every byte goes to the real Postgres / Kafka / ClickHouse server behind it; the proxy only
decides whether the network path works:

- `refuse()`: open connections are cut and new ones refused (a stopped server, a closed port);
- `blackhole()`: connections are accepted and open ones stay up, but no byte moves in
  either direction (a hung server, a partitioned network: clients wait for their timeouts);
- `restore()`: traffic flows again (new connections; cut ones stay cut);
- `held_bytes()`: what is stuck in the black hole, so a test can wait for a hang.

Usage: `with FaultProxy("127.0.0.1", 5432) as proxy: url = f"...@127.0.0.1:{proxy.port}/..."`.
"""

from __future__ import annotations

import fcntl
import selectors
import socket
import struct
import termios
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["up", "refuse", "blackhole"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.mode: Mode = "up"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        self._thread = threading.Thread(target=self._pump, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._cut_all()
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- faults -------------------------------------------------------------

    def refuse(self) -> None:
        """Cut every open connection and refuse new ones (the port is closed)."""
        with self._lock:
            self.mode = "refuse"
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._cut_all()

    def blackhole(self) -> None:
        """Keep connections open but move no bytes; new connections are accepted and stall."""
        with self._lock:
            self.mode = "blackhole"

    def restore(self) -> None:
        with self._lock:
            if self.mode == "refuse":
                self._listen_locked()
            self.mode = "up"

    def held_bytes(self) -> int:
        """Bytes the proxy holds, not forwarded, in either direction: in a black hole, > 0
        once a call hangs in it, whether its request is held or, sent just before the
        black hole, the server's answer (what a test waits for before it acts on the hang)."""
        with self._lock:
            sockets = [s for pair in self._pairs for s in pair]
        held = 0
        for sock in sockets:
            try:
                held += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
            except (OSError, ValueError):
                continue  # cut meanwhile
        return held

    # ---- internals ----------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            self._listen_locked()

    def _listen_locked(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.listen_host, self.port))  # the same port again after refuse()
        s.listen(128)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self._listener = s

    def _cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _pump(self) -> None:
        while not self._stop.is_set():
            sel = selectors.DefaultSelector()
            with self._lock:
                listener, mode, pairs = self._listener, self.mode, list(self._pairs)
            try:
                if listener is not None:
                    sel.register(listener, selectors.EVENT_READ, None)
                if mode == "up":
                    for a, b in pairs:
                        sel.register(a, selectors.EVENT_READ, b)
                        sel.register(b, selectors.EVENT_READ, a)
            except (ValueError, OSError):
                sel.close()
                continue  # a socket closed under us: rebuild the set
            try:
                events = sel.select(timeout=0.05) if sel.get_map() else []
            except (ValueError, OSError):
                events = []
            if not sel.get_map():
                self._stop.wait(0.05)
            for key, _ in events:
                if key.data is None:
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]
            sel.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        with self._lock:
            self._pairs.append((client, upstream))

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                dst.setblocking(True)
                dst.sendall(data)
                dst.setblocking(False)
                return
            except OSError:
                pass
        with self._lock:
            self._pairs = [p for p in self._pairs if src not in p]
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
