"""The control socket between the system and each actor process.

A ``SOCK_SEQPACKET`` socketpair: message boundaries kept, file descriptors passed with
``SCM_RIGHTS`` (the eventfds of peers), and EOF as soon as either end's process dies,
whatever killed it. It carries only rare messages (start, channel set-up, lookup, stop);
data travels through the rings.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

MAX_CONTROL = 64 * 1024
MAX_FDS = 64


def socketpair() -> tuple[socket.socket, socket.socket]:
    """Return a connected (system end, actor end) pair."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, obj: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one control message, with *fds* attached. Raises ``OSError`` if the peer is gone."""
    data = pickle.dumps(obj, protocol=5)
    if len(data) > MAX_CONTROL:
        msg = f"control message of {len(data)} bytes exceeds {MAX_CONTROL}"
        raise ValueError(msg)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one control message and its fds; None at EOF (the peer process is gone).

    Raises ``BlockingIOError`` on a non-blocking socket with nothing to read.
    """
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL, MAX_FDS)
    except ConnectionResetError:
        return None
    if not data or data == b"quit":  # EOF, or a spare told to go (see _process.spares)
        return None
    return pickle.loads(data), fds
