"""The edge's error vocabulary: the client is gone, whatever the socket said.

Theory of operation. A connection ends for three kinds of reasons, and the
server logs them differently:

* the client went away: it reset or closed the connection, or the network
  between us failed (EPIPE, ECONNRESET, ECONNABORTED, ENOTCONN, ETIMEDOUT,
  EHOSTUNREACH, ENETUNREACH). That is `ClientGone`, on reads and writes
  alike, as trio's `BrokenResourceError` is: `with client_gone:` turns
  such an `OSError` into it, and `server.txpath.KernelTx` (the only code that reads or
  writes the host socket for a connection, and the only caller of sosend and
  sendfile) applies it to everything it raises. An orderly end of stream is
  not an error: a read returns b"", which is h11's end of stream too (and the
  end of a handshake that will not complete). Ends quietly (log level debug);
* the modeled kernel aborted the socket: EIO, from a page-in that failed or
  found the file changed (`sendfile_iodone`), or from encryption. It is the
  server's own response that could not be completed, already counted
  (`server.responses_aborted`, `sendfile.io_errors`), so it stays an `OSError`
  with EIO and ends the connection quietly too;
* anything else (EMFILE, EBADF, ENOSPC, ...) is not the client's doing: a
  server-side error, logged as a warning by `Connection.run`.
"""

from __future__ import annotations

import errno
from types import TracebackType

# errnos that say the client, or the path to it, is gone.
CLIENT_GONE_ERRNOS = frozenset(
    {
        errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT,
        errno.EHOSTUNREACH, errno.ENETUNREACH,
    }
)  # fmt: skip


class ClientGone(Exception):
    """The peer closed or reset the connection, or the path to it failed."""


class _ClientGone:
    """`with client_gone:` re-raises an `OSError` that says the client is gone as
    `ClientGone` (chained to it), and lets every other error through unchanged
    (EIO from the modeled kernel, server-side errors). A plain class, not a
    generator: it wraps every send and receive."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, OSError) and exc.errno in CLIENT_GONE_ERRNOS:
            raise ClientGone(str(exc)) from exc


client_gone = _ClientGone()
