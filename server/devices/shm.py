"""Shared-memory files a device maps from (or gives to) a process.

Theory of operation. A device that shares memory with a process maps a file
MAP_SHARED (bpf's zero-copy buffers: the process's memfd, passed with
BIOCSETZBUF; netmap's region: a memfd the server makes and passes). A mapped
page whose file has since been truncated faults with SIGBUS on access, and a
SIGBUS in the server kills every connection. So the file must not be able to
shrink while it is mapped: `shm_map` maps a process's file only if it is a
regular file sealed F_SEAL_SHRINK (memfd_create with MFD_ALLOW_SEALING, then
fcntl(F_ADD_SEALS)); `shm_seal` seals a file the server made itself before a
process gets it.

Models: the kernel wiring the user pages it shares (vm_fault_quick_hold_pages
in bpf_zerocopy.c; netmap's own allocator): a wired page cannot go away under
the kernel. Differences: a shared file and its seals stand in for wiring.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat

# The seals a shared file needs before it is mapped: it cannot shrink.
SHM_SEALS_NEEDED = fcntl.F_SEAL_SHRINK
# The seals the server puts on a file it shares: its size is fixed and final.
SHM_SEALS_OWN = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def shm_map(fd: int, maxsize: int, what: str) -> mmap.mmap:
    """Map a process's shared-memory file (read/write, MAP_SHARED), whole.
    EINVAL, with a one-line message starting with `what`, unless it is a
    regular file sealed against shrinking, of 1..maxsize bytes. The caller
    owns the mapping; `fd` stays the caller's (it may be closed at once)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{what}: the shared memory must be a regular file (a memfd)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0  # a file system without seals
    if seals & SHM_SEALS_NEEDED != SHM_SEALS_NEEDED:
        raise OSError(
            errno.EINVAL,
            f"{what}: the shared-memory file must be sealed F_SEAL_SHRINK "
            "(memfd_create(MFD_ALLOW_SEALING), then fcntl(F_ADD_SEALS))",
        )
    size = st.st_size
    if not 0 < size <= maxsize:
        raise OSError(errno.EINVAL, f"{what}: a shared-memory file of {size} bytes")
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def shm_seal(fd: int) -> None:
    """Seal a shared-memory file the server made (memfd_create with
    MFD_ALLOW_SEALING, already its final size) before a process gets it, so
    that the process cannot truncate what the server has mapped."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SHM_SEALS_OWN)
