"""Process-group hygiene for CPU (gloo) runs.

Lightning destroys the default process group at exit only for NCCL. A gloo group left alive until interpreter
finalization can abort the process ("terminate called without an active exception", SIGABRT): gloo's C++ worker
threads may still hold the buffers of the last collective (pytorch/pytorch#190489). :func:`destroy_group_at_exit`
registers, once per process, an ``atexit`` handler that destroys the group while the interpreter is still whole; it
does nothing when the group is already gone or is not gloo.
"""

from __future__ import annotations

import atexit

_registered = False


def _destroy_if_initialized() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_group_at_exit() -> bool:
    """Make sure an initialised gloo default group is destroyed before this process finalizes; True when the handler
    is (or already was) registered."""
    global _registered
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != "gloo":
        return _registered
    if not _registered:
        atexit.register(_destroy_if_initialized)
        _registered = True
    return True
