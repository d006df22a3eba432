"""Worker processes that do not outlive their parent.

A ``ProcessPoolExecutor`` worker blocks on its task queue forever when the parent is killed with
SIGKILL (or SIGTERM's default action): it holds both ends of the queue's pipe, so it never sees EOF,
and an orphaned TTS worker keeps ~90 MB of model. :func:`die_with_parent`, called from the pool's
initializer, asks the Linux kernel to send the worker SIGTERM when its parent dies.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Have the calling process receive ``sig`` when its parent exits; True if the kernel agreed.

    ``parent_pid`` is the pid the parent had when it started us: if it already died before this call
    (we were re-parented to init or a subreaper), exit now, as the signal would never come.
    Returns False where prctl is unavailable (not Linux); then only a clean shutdown stops workers.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True
