"""TLS key export on a BPF descriptor: beyond FreeBSD, nomapd's own.

Theory of operation. A capture of TLS traffic is unreadable without the
session secrets; Wireshark reads them from a pcapng Decryption Secrets Block.
FreeBSD has no way to take them from a BPF descriptor (its TLS secrets live in
the process that ran the handshake); nomapd's handshakes run in the worker,
next to the modeled kernel, so a capture may ask the worker for them:

  BIOCSKEYLOG(1)  `bpf_keylog_attach`: the descriptor joins `bpf.bpf_keyds`.
                  Only the owner can open /dev/bpf (SO_PEERCRED), as for
                  packets.
  bpf_keylog      the worker, when a TLS session completes its handshake,
                  hands its NSS key log lines to every descriptor on the
                  list (appended to `d.bd_keys`, at most BPF_KEYLOG_MAX bytes
                  pending; beyond, lines are dropped and counted). With no
                  descriptor on the list the caller keeps nothing.
  BIOCGKEYLOG(n)  `bpf_keylog_take`: the pending lines, whole lines only, at
                  most n bytes (ENOBUFS if the first line is longer); taken
                  lines are wiped from the descriptor.
  BIOCSKEYLOG(0), close  `bpf_keylog_detach`: off the list, pending wiped.

Nothing here writes to disk. Wiping is best effort, as in ktls/keylog.py:
the descriptor's bytearray is zeroed before it is dropped, the bytes handed
out are the caller's.

Models: nothing in FreeBSD (see bpf/bpf_h.py for the ioctl numbers, 200 and up,
marked as nomapd's).
"""

from __future__ import annotations

import errno

from bpf.bpf_h import BPF_KEYLOG_MAX
from bpf.bpfdesc import Bpf, BpfD


def bpf_keylog_attach(d: BpfD) -> bool:
    """BIOCSKEYLOG(1): True if d was not asking for keys before."""
    if d.bd_keylog:
        return False
    d.bd_keylog = True
    bpf = d.bd_bpf
    bpf.bpf_keyds.append(d)
    bpf.stats.keylog_descriptors += 1
    return True


def _wipe(d: BpfD) -> None:
    bpf = d.bd_bpf
    bpf.stats.keylog_bytes -= len(d.bd_keys)
    d.bd_keys[:] = bytes(len(d.bd_keys))
    d.bd_keys = bytearray()


def bpf_keylog_detach(d: BpfD) -> None:
    """BIOCSKEYLOG(0) and close: off the list, pending lines wiped."""
    if not d.bd_keylog:
        return
    d.bd_keylog = False
    bpf = d.bd_bpf
    bpf.bpf_keyds.remove(d)
    bpf.stats.keylog_descriptors -= 1
    _wipe(d)


def bpf_keylog_wanted(bpf: Bpf) -> bool:
    """Whether any descriptor asked for keys (else the caller keeps nothing)."""
    return bool(bpf.bpf_keyds)


def bpf_keylog(bpf: Bpf, lines: list[bytes]) -> None:
    """A TLS session completed its handshake: its key log lines (no terminators)
    go to every descriptor that asked."""
    if not lines:
        return
    text = b"".join(line + b"\n" for line in lines)
    for d in bpf.bpf_keyds:
        if len(d.bd_keys) + len(text) > BPF_KEYLOG_MAX:
            bpf.stats.keylog_dropped += len(lines)
            continue
        d.bd_keys += text
        bpf.stats.keylog_bytes += len(text)
        bpf.stats.keylog_lines += len(lines)


def bpf_keylog_take(d: BpfD, room: int) -> bytes:
    """BIOCGKEYLOG: pending whole lines, at most `room` bytes; b"" if none."""
    keys = d.bd_keys
    if not keys:
        return b""
    end = keys.rfind(b"\n", 0, room) + 1 if len(keys) > room else len(keys)
    if end == 0:
        raise OSError(errno.ENOBUFS, f"BIOCGKEYLOG: {room} bytes hold no whole line")
    out = bytes(keys[:end])
    keys[:end] = bytes(end)
    del keys[:end]
    d.bd_bpf.stats.keylog_bytes -= end
    return out
