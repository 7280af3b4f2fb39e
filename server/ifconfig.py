"""ifconfig(8) for the modeled interface: print it, and change its options at run time.

`ifconfig_apply(ifp, "nm0 -nomap tso")` does what `ifconfig nm0 -nomap tso`
does: ifconfig's setifcap starts from the enabled capabilities (SIOCGIFCAP),
sets or clears each word's bits, keeps only what the hardware supports
(`if_capabilities`) and asks the driver (SIOCSIFCAP, `Ifnet.set_capenable`,
which also turns TSO off with its checksum offload as drivers do). So a word
for a capability nm0 lacks (`lro`, `txtls`) changes nothing, as on FreeBSD.
An unknown word is EINVAL and an unknown interface ENXIO, with nothing
changed. `ifconfig_text` prints the two lines ifconfig prints first:

    nm0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
            options=4200302<TXCSUM,TSO4,TSO6,TXCSUM_IPV6,NOMAP>

The driver reads `if_capenable` per packet (ip_output, ip6_output,
tcp_output, tcp_input), so a change applies from the next packet on; the
packets already queued were loaded for DMA when queued and go out as they are.

Models: sbin/ifconfig/ifconfig.c (setifcap, the IFCAPBITS names, status's
flags= and options= lines) and sys/net/if.c (SIOCSIFCAP). Deliberate
difference: the flags word is fixed (the model's interface is always up).
"""

from __future__ import annotations

import errno

from mbuf.ifnet import Ifnet
from mbuf.sys_ctlio import CAP_WORDS, IF_FLAGS, IFCAPBITS, IFFBITS, printb


def parse_words(words: list[str]) -> list[tuple[int, bool]]:
    """[(bits, on)] for capability words; ValueError naming the first unknown one."""
    out: list[tuple[int, bool]] = []
    for w in words:
        on = not w.startswith("-")
        bits = CAP_WORDS.get(w.removeprefix("-"))
        if bits is None:
            raise ValueError(w)
        out.append((int(bits), on))
    return out


def ifconfig_apply(ifp: Ifnet, words: list[str]) -> tuple[int, str]:
    """`ifconfig IFNAME WORD...`: (0, "") or (errno, message); nothing is changed on error."""
    if not words:
        return errno.EINVAL, "usage: ifconfig interface [-]option ..."
    if words[0] != ifp.if_xname:
        return errno.ENXIO, f"interface {words[0]} does not exist"
    try:
        changes = parse_words(words[1:])
    except ValueError as e:
        return errno.EINVAL, f"{e.args[0]}: bad value"
    caps = ifp.if_capenable
    for bits, on in changes:
        caps = caps | bits if on else caps & ~bits
    ifp.set_capenable(caps & ifp.if_capabilities)  # SIOCSIFCAP
    return 0, ""


def ifconfig_info(ifp: Ifnet) -> dict[str, object]:
    """One interface as GET /ifconfig shows it."""
    names = IFCAPBITS
    info: dict[str, object] = {
        "name": ifp.if_xname,
        "flags": IF_FLAGS,
        "mtu": ifp.if_mtu,
        "capenable": ifp.if_capenable,
        "capabilities": ifp.if_capabilities,
        "options": [n for bit, n in names if ifp.if_capenable & bit],
        "supported": [n for bit, n in names if ifp.if_capabilities & bit],
    }
    info["text"] = ifconfig_text(info)
    return info


def ifconfig_text(info: dict[str, object]) -> str:
    flags = info["flags"]
    cap = info["capenable"]
    assert isinstance(flags, int) and isinstance(cap, int)
    return (
        f"{info['name']}: flags={printb(flags, IFFBITS)} metric 0 mtu {info['mtu']}\n"
        f"\toptions={printb(cap, IFCAPBITS)}\n"
    )
