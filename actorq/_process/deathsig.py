"""Children die with their parent: PR_SET_PDEATHSIG, plus a watched socket as fallback.

PR_SET_PDEATHSIG fires when the parent *thread* exits, so a process is forked only from
a thread that lives as long as the system (see ``spawn``). Under forkserver the parent is
the fork server, which exits as soon as the user's process is gone. The control socket
to the system is the second line: an actor that reads EOF on it exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send *sig* to this process when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
