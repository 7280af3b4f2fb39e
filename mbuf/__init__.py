"""mbuf: the modeled FreeBSD kernel data path (sans-IO; never imports trio).

Theory of operation. Physical pages and the page cache, mbufs with the 2019
unmapped EXT_PGS layout, sf_bufs, socket buffers, sendfile, tcp_output,
ip_output and ip6_output, the NIC model, and the receive path (tcp_input.py:
if_rx, ether_input, ip_input, ip6_input, tcp_input), each in the module
named for it.
"""

from mbuf._core import CORE  # first: it chooses the compiled or the pure core
from mbuf.kern import Kernel
from mbuf.mbuf import Mbuf, MbufExtPgs, MFlags, m_copydata, m_copym, m_freem
from mbuf.socket import Socket, soclose, sosend
from mbuf.tcp_output import TcpCb, tcp_acked, tcp_output

__all__ = [
    "CORE",
    "Kernel",
    "MFlags",
    "Mbuf",
    "MbufExtPgs",
    "Socket",
    "TcpCb",
    "m_copydata",
    "m_copym",
    "m_freem",
    "soclose",
    "sosend",
    "tcp_acked",
    "tcp_output",
]
