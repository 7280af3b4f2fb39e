"""The model's system-call ABI for devices: the wire format of a device file.

Theory of operation. A FreeBSD program reaches /dev/bpf through open(2),
ioctl(2), read(2), poll(2) and close(2) on a character device. In nomapd each
worker serves its devices as Unix stream sockets (server/devices/); one
accepted connection is one open file, and each system call is one small
message on it. This header is what both sides include (the server's device
layer and userland's client library): the struct layouts, the operation codes
and the errno convention. It does no I/O.

A request (process -> kernel) is `DEV_REQ` followed by `length` payload bytes:

  op      DEVOP_IOCTL (cmd: the ioctl number, payload: the argument bytes),
          DEVOP_READ (count: the buffer size; flags: DEVF_NONBLOCK),
          DEVOP_WRITE (payload: the bytes), DEVOP_POLL (count: the events asked
          for, 0 meaning POLLIN; answers DEV_POLL: the ready bits),
          DEVOP_CLOSE (optional: closing the socket is close(2) too)
  cmd     the ioctl number (0 otherwise)
  flags   DEVF_NONBLOCK: the file's O_NONBLOCK for this call
  count   read's byte count
  length  payload bytes that follow

File descriptors (a shared-memory memfd for BIOCSETZBUF) travel with the
request's first byte as SCM_RIGHTS ancillary data; a reply may carry
descriptors the same way (netmap's region, passed at registration: the
process maps what it receives, as it would mmap /dev/netmap). An ioctl that passes a
shared-memory file appends `DEV_SHM` to its argument: the address at which the
process mapped the file's offset 0, so that the kernel can translate the user
addresses in the argument (bz_bufa, bz_bufb) into offsets of its own mapping.

Every message from the kernel is `DEV_MSG` followed by `length` bytes; `kind`
tells a reply from a wakeup, so the two cannot be confused on the one stream:

  DEVMSG_REPLY   the answer to the one outstanding request: `error` is 0 and
                 the payload what the call copies out, or `error` is an errno
                 number and the payload the kernel's one-line message (UTF-8).
                 One call is deferred: netmap's SYNC_KLOOP_START, which in the
                 kernel does not return until its loop stops. Its reply comes
                 when the loop ends (SYNC_KLOOP_STOP or close), and the file's
                 other requests are answered meanwhile; the reply that ends a
                 loop (STOP's) always follows the loop's own, so a process
                 knows whose reply is whose (userland/netmap_user.py)
  DEVMSG_WAKEUP  readiness (selwakeup): the file may be readable; no payload.
                 At most one is outstanding per file: the kernel sends the next
                 only after the process's next request, so a process that polls
                 its socket sees one byte-sized event, not one per packet.

Errno numbers are the host's (Linux) values from Python's errno module, as
the model's kernel raises them; `errno_text` names one for a message.

Models: the system-call boundary (sys/kern/sys_generic.c: ioctl, read, poll;
the devfs character device). Differences: Unix sockets instead of character
devices, messages instead of system calls, memfd descriptors instead of wired
user pages (README "Devices").
"""

from __future__ import annotations

import errno
import struct
from typing import Final

DEV_REQ: Final = struct.Struct("<IIIII")  # op, cmd, flags, count, length
DEV_MSG: Final = struct.Struct("<IiI")  # kind, error, length
DEV_SHM: Final = struct.Struct("<Q")  # the process's address of a passed file's offset 0

DEVOP_IOCTL: Final = 1
DEVOP_READ: Final = 2
DEVOP_WRITE: Final = 3
DEVOP_POLL: Final = 4
DEVOP_CLOSE: Final = 5
DEVOPS: Final = (DEVOP_IOCTL, DEVOP_READ, DEVOP_WRITE, DEVOP_POLL, DEVOP_CLOSE)

DEVF_NONBLOCK: Final = 0x1

DEVMSG_REPLY: Final = 1
DEVMSG_WAKEUP: Final = 2

DEV_POLL: Final = struct.Struct("<I")  # revents
POLLIN: Final = 0x1  # sys/poll.h
POLLOUT: Final = 0x4
POLLERR: Final = 0x8
POLLRDNORM: Final = 0x40
POLLWRNORM: Final = POLLOUT

DEV_MAXPAYLOAD: Final = 16 * 1024 * 1024  # a request or reply larger is EINVAL / a broken peer
DEV_MAXFDS: Final = 4  # descriptors one request may carry


def dev_req(op: int, cmd: int = 0, flags: int = 0, count: int = 0, payload: bytes = b"") -> bytes:
    """One request's bytes: header and payload."""
    return DEV_REQ.pack(op, cmd, flags, count, len(payload)) + payload


def dev_reply(error: int, payload: bytes = b"") -> bytes:
    """One reply's bytes."""
    return DEV_MSG.pack(DEVMSG_REPLY, error, len(payload)) + payload


def dev_wakeup() -> bytes:
    return DEV_MSG.pack(DEVMSG_WAKEUP, 0, 0)


def errno_text(e: int) -> str:
    """The symbolic name of errno e ("EINVAL"), or its number."""
    return errno.errorcode.get(e, str(e))
