"""Files only this user can plant or change: the spool's entries and key, the local
copy of the fleet view. One place for the rules: a directory chain nobody else can
write (created 0700), files written whole (a temporary file, fsync, rename) and
0600.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import SpoolError

__all__ = ["check_private_chain", "ensure_private_dir", "fsync_dir", "write_atomic"]


def check_private_chain(directory: Path) -> None:
    """SpoolError naming the first directory on the way to `directory` that another
    user could write or replace: one not owned by this user (or root), or writable
    by group/others without the sticky bit; below a sticky shared directory (the
    temporary directory), the next one must be ours. `directory` itself must be ours
    and writable by nobody else."""
    if not hasattr(os, "geteuid"):  # Windows: ACLs, not modes; the profile is private
        return
    uid = os.geteuid()
    real = Path(os.path.realpath(directory))
    parts = [real, *real.parents][::-1]  # "/" first
    below_sticky = False
    for index, part in enumerate(parts):
        try:
            st = os.stat(part)
        except FileNotFoundError:
            return  # the rest will be created by us, 0700
        last = index == len(parts) - 1
        if st.st_uid not in (uid, 0) or ((below_sticky or last) and st.st_uid != uid):
            raise SpoolError(f"spool directory refused: {str(part)!r} belongs to another user")
        shared = st.st_mode & stat.S_IWOTH or (
            st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid))
        if shared and (last or not st.st_mode & stat.S_ISVTX):
            raise SpoolError(
                f"spool directory refused: other users can write {str(part)!r} "
                f"(mode {stat.S_IMODE(st.st_mode):o}); use a directory of this user's own"
            )
        below_sticky = bool(shared)


def _private_group(gid: int) -> bool:
    """A user-private group (umask 002 systems make ~/.cache 0775): this user's
    primary group, named after the user, with no other member."""
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return (gid == me.pw_gid and group.gr_name == me.pw_name
            and set(group.gr_mem) <= {me.pw_name})


def ensure_private_dir(path: Path) -> None:
    """Create `path` (0700, every missing level) and check the chain to it: SpoolError
    naming the first directory another user could write or replace."""
    check_private_chain(path)
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    for level in missing:
        with contextlib.suppress(FileExistsError):
            os.mkdir(level, 0o700)
    check_private_chain(path)


def write_atomic(path: Path, data: bytes, *, prefix: str = ".tmp-") -> None:
    """Replace `path` with `data` whole (0600): a reader sees the old file or the new
    one, never a part; a failure leaves the old one and no temporary behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
