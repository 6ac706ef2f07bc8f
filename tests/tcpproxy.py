"""A small TCP proxy a test controls: forward, then cut (reset + refuse), then restore;
or freeze (stop forwarding, connections stay open: a server stopped with SIGSTOP), thaw.

``cut()`` resets every open connection (``SO_LINGER`` 0, so the peers see RST) and closes
the listener, so new connections are refused; ``restore()`` listens again on the same
port. ``freeze()`` stops moving bytes in both directions on every connection, old and new
(new ones are still accepted, as a stopped server's kernel does), without closing any;
``thaw()`` resumes. All return only once the proxy is in the new state. Every socket is opened and
closed by the thread that owns it (the control methods only change the wanted state and
wait for it), so no file descriptor is closed under another thread's feet.

    with TcpProxy("127.0.0.1", 3306) as proxy:
        url = f"mysql://root@127.0.0.1:{proxy.port}/test"
        ...
        proxy.cut(); ...; proxy.restore()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType

_TICK = 0.02  # how often the owner threads look at the wanted state (a poll, not a sleep)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._want_listen = True
        self._listening = False
        self._epoch = 0  # bumped by cut(): connections of older epochs reset themselves
        self._active = 0
        self._frozen = False
        self._pumping = 0  # pump threads inside a select/forward step (0 once frozen)
        self._stop = False
        self.accepted = 0  # connections accepted so far
        self.resets = 0  # connections reset by cut()
        self._thread = threading.Thread(target=self._acceptor, name="tcpproxy", daemon=True)

    # -- control ------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._wait(lambda: self._listening, "listening")
        return self

    def cut(self, timeout: float = 10.0) -> None:
        """Reset all open connections and refuse new ones until :meth:`restore`."""
        with self._cond:
            self._epoch += 1
            self._want_listen = False
            self._cond.notify_all()
        self._wait(lambda: not self._listening and self._active == 0, "cut", timeout)

    def restore(self, timeout: float = 10.0) -> None:
        """Listen again on the same port."""
        with self._cond:
            self._want_listen = True
            self._cond.notify_all()
        self._wait(lambda: self._listening, "restored", timeout)

    def freeze(self, timeout: float = 10.0) -> None:
        """Stop forwarding (connections stay open, bytes wait in the socket buffers)."""
        with self._cond:
            self._frozen = True
            self._cond.notify_all()
        self._wait(lambda: self._pumping == 0, "frozen", timeout)

    def thaw(self) -> None:
        """Forward again."""
        with self._cond:
            self._frozen = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._epoch += 1
            self._cond.notify_all()
        self._thread.join(10)
        self._wait(lambda: self._active == 0, "closed", 10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _wait(self, pred: object, what: str, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, timeout):  # type: ignore[arg-type]
                raise TimeoutError(f"tcp proxy not {what} within {timeout} s")

    # -- owner threads ------------------------------------------------------------------
    def _acceptor(self) -> None:
        listener: socket.socket | None = None
        try:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    want = self._want_listen
                    epoch = self._epoch
                if want and listener is None:
                    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind((self.host, self.port))
                    listener.listen(64)
                    self.port = listener.getsockname()[1]
                    with self._cond:
                        self._listening = True
                        self._cond.notify_all()
                elif not want and listener is not None:
                    listener.close()
                    listener = None
                    with self._cond:
                        self._listening = False
                        self._cond.notify_all()
                if listener is None:
                    with self._cond:
                        self._cond.wait(_TICK)
                    continue
                listener.settimeout(_TICK)
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                with self._cond:
                    self._active += 1
                    self.accepted += 1
                threading.Thread(target=self._pump, args=(client, upstream, epoch),
                                 name="tcpproxy-conn", daemon=True).start()
        finally:
            if listener is not None:
                listener.close()
            with self._cond:
                self._listening = False
                self._cond.notify_all()

    def _pump(self, client: socket.socket, upstream: socket.socket, epoch: int) -> None:
        sel = selectors.DefaultSelector()
        peer = {client: upstream, upstream: client}
        client.setblocking(False)
        upstream.setblocking(False)
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        reset = False
        try:
            while True:
                with self._cond:
                    if self._epoch != epoch:
                        reset = True
                        return
                    if self._frozen:
                        self._cond.wait(_TICK)
                        continue
                    self._pumping += 1
                try:
                    if not self._forward(sel, peer):
                        return
                finally:
                    with self._cond:
                        self._pumping -= 1
                        self._cond.notify_all()
        finally:
            sel.close()
            if reset:
                _reset(client)
                _reset(upstream)
            else:
                client.close()
                upstream.close()
            with self._cond:
                self._active -= 1
                if reset:
                    self.resets += 1
                self._cond.notify_all()

    @staticmethod
    def _forward(sel: selectors.BaseSelector,
                 peer: dict[socket.socket, socket.socket]) -> bool:
        """One select step: what is readable is sent on; False when a side closed."""
        for key, _ in sel.select(_TICK):
            src: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = src.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not data:
                return False
            dst = peer[src]
            dst.setblocking(True)
            try:
                dst.sendall(data)
            except OSError:
                return False
            finally:
                dst.setblocking(False)
        return True
