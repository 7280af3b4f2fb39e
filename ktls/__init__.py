"""ktls: kernel TLS, the records of the modeled data path (sans-IO; never imports trio).

Theory of operation. Sessions, keys, framing, encryption and the receive path
of FreeBSD's kernel TLS, with the handshake glue that hands OpenSSL's secrets
to them, each in the module named for it.
"""
