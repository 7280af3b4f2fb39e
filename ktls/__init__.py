"""ktls: kernel TLS, the records of the modeled data path (sans-IO; never imports trio).

Theory of operation. Sessions, keys, framing, encryption and the receive path
of FreeBSD's kernel TLS, with the handshake glue that hands OpenSSL's secrets
to them, each in the module named for it.
"""

# First: `mbuf._core` chooses the compiled or the pure core for every kernel package
# (they are one mypyc group), before any module of this package is loaded.
from mbuf._core import CORE

__all__ = ["CORE"]
