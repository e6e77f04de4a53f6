"""A TCP relay in front of a real Redis that drops one connection after the server answered a chosen command.

What a web node sees when its connection dies after Redis ran a script but before the reply
arrived (a restart, a proxy or an idle timeout cutting the socket): the work was done and the
answer is lost. The relay forwards bytes unchanged; once armed, the first reply that follows a
request containing ``marker`` is swallowed and both sockets are closed.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class DroppingRelay:
    """Listens on 127.0.0.1 (an ephemeral port) and relays to ``target``; ``drops`` counts the connections cut."""

    def __init__(self, target: tuple[str, int], marker: bytes, times: int = 1) -> None:
        self.target = target
        self.marker = marker
        self.left = times
        self.drops = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            armed = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, armed), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.marker in data:
                    with self._lock:
                        if self.left > 0:
                            self.left -= 1
                            armed.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                if armed.is_set():
                    # Redis has run the command (this is its reply): the client never hears of it.
                    self.drops += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def close(self) -> None:
        """Stop accepting (open relayed connections end with their peers)."""
        self._closed = True
        self._server.close()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
