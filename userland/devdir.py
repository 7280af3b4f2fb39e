"""Where a running server's devices live, and how a program finds them.

Theory of operation. Each server instance keeps its device files (Unix
sockets) in a per-user runtime directory, mode 0700:

  <root>/<port>/w<N>/<device>      e.g. .../nomapd/8443/w0/bpf
  <root>/<port>/lock               flock'ed by the owning server, its pid inside

`<root>` is `$XDG_RUNTIME_DIR/nomapd` when that variable names an absolute,
existing directory owned by the user (the XDG rule), else `<state>/run`
under the state directory (`state_dir()`: $NOMAPD_STATE_DIR, else
$XDG_STATE_HOME/nomapd, else ~/.local/state/nomapd). `<port>` is the
instance's HTTPS (or --http) port, so two servers on different ports do not
collide; `w<N>` is worker N (w0 alone with one worker).

A program finds an instance (`find_instance`) by an explicit directory
(`--server DIR`), by a port (`--server PORT`: `<root>/<port>`), or, with
neither, as the only instance under the root (several: the caller must choose)
whose server still runs (a killed server leaves its directory, with its pid in
the lock, until another server takes the port).
The server owns the layout (server/devices/devfs.py creates and removes it);
this module is the shared map, imported by both sides.

Models: FreeBSD's /dev (devfs), one per machine. Differences: one tree per
server instance and per worker, under a user's private directory.
"""

from __future__ import annotations

import os
import pathlib


def state_dir() -> pathlib.Path:
    """Where nomapd keeps state: $NOMAPD_STATE_DIR, else $XDG_STATE_HOME/nomapd,
    else ~/.local/state/nomapd.  An empty or relative $XDG_STATE_HOME is ignored,
    as the XDG Base Directory specification requires."""
    explicit = os.environ.get("NOMAPD_STATE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return pathlib.Path(xdg) / "nomapd"
    return pathlib.Path.home() / ".local" / "state" / "nomapd"


def runtime_root() -> pathlib.Path:
    """The per-user directory holding every instance's devices (see the module head)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and st.st_uid == os.getuid() and os.access(xdg, os.W_OK | os.X_OK):
            return pathlib.Path(xdg) / "nomapd"
    return state_dir() / "run"


def instance_dir(port: int) -> pathlib.Path:
    return runtime_root() / str(port)


def worker_dirs(instance: pathlib.Path) -> list[pathlib.Path]:
    """The instance's worker directories, w0 first."""
    found = [p for p in instance.glob("w*") if p.name[1:].isdigit() and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[1:]))


def find_instance(server: str | None = None) -> pathlib.Path:
    """The instance directory a program should use: `server` is a directory, a port,
    or None (the only instance under runtime_root()). Raises LookupError with a
    one-line reason."""
    if server:
        path = instance_dir(int(server)) if server.isdigit() else pathlib.Path(server)
        if not worker_dirs(path):
            raise LookupError(f"no nomapd devices in {str(path)!r} (is the server running?)")
        return path
    root = runtime_root()
    found = sorted(
        p for p in root.glob("*") if p.name.isdigit() and worker_dirs(p) and not _stale(p)
    )
    if not found:
        raise LookupError(f"no running nomapd server under {str(root)!r}")
    if len(found) > 1:
        ports = ", ".join(p.name for p in found)
        raise LookupError(f"several nomapd servers (ports {ports}): choose one with --server PORT")
    return found[0]


def _stale(instance: pathlib.Path) -> bool:
    """True if the instance was left by a server that is gone (killed: nobody
    removed it): the pid its lock names no longer runs. The lock itself is not
    tried: a program holding it even for a moment would make a server starting
    on that port refuse. A lock without a pid we can read counts as running."""
    try:
        pid = int((instance / "lock").read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)  # PermissionError too means a process runs with that pid
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def device_paths(instance: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Every worker's device `name` ("bpf") in an instance, w0 first."""
    return [w / name for w in worker_dirs(instance) if (w / name).exists()]
