"""A TCP proxy that misbehaves on purpose, one planned fault per new connection.

Faults: ``drop:N`` closes the client side after N bytes from the server; ``status:C``
answers an HTTP status C without asking the server (``status:429:1`` adds
Retry-After: 1); ``stall:S`` waits S seconds before forwarding; ``flip:N`` changes
byte N of the server's answer; ``slow:B`` forwards at about B bytes a second in
bursts, ``trickle:B`` one byte at a time; ``freeze:N`` forwards N bytes from the server,
then nothing more, the connection held open (a peer gone silent);
anything else passes through. ``default`` applies when no fault is planned.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque

from tests.servers import free_port


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.faults: deque[str] = deque()
        self.default = "pass"
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def plan(self, *faults: str) -> None:
        self.faults.extend(faults)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            fault = self.faults.popleft() if self.faults else self.default
            threading.Thread(target=self._handle, args=(client, fault), daemon=True).start()

    def _handle(self, client: socket.socket, fault: str) -> None:
        kind, _, arg = fault.partition(":")
        if kind == "status":
            code, _, retry_after = arg.partition(":")
            with contextlib.suppress(OSError):
                client.recv(65536)
                extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
                client.sendall(
                    f"HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\n{extra}"
                    "Connection: close\r\n\r\n".encode()
                )
            client.close()
            return
        if kind == "stall":
            self._stop.wait(float(arg))
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        limit = int(arg) if kind in ("drop", "flip", "slow", "trickle", "freeze") else None
        threading.Thread(
            target=self._pipe, args=(client, upstream, None, None), daemon=True
        ).start()
        self._pipe(upstream, client, limit, kind)

    def _pipe(
        self, src: socket.socket, dst: socket.socket, limit: int | None, kind: str | None
    ) -> None:
        sent = 0
        try:
            while data := src.recv(8192 if kind == "slow" else 65536):
                if kind == "slow" and limit:
                    self._stop.wait(len(data) / limit)
                if kind == "trickle" and limit:
                    for byte in data:
                        if self._stop.wait(1 / limit):
                            return
                        dst.sendall(bytes([byte]))
                    continue
                if limit is not None and kind in ("drop", "freeze") and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    if kind == "freeze":
                        self._stop.wait()
                    break
                if limit is not None and kind == "flip" and sent <= limit < sent + len(data):
                    i = limit - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
