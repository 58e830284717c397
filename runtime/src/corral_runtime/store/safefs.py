"""Opening what is inside the store without following a symbolic link the store did not make.

The store's root is taken as configured (an administrator may have made it a link). Below it,
each directory is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's descriptor and
each file with ``O_NOFOLLOW`` relative to its directory's, and what was opened is checked with
``fstat`` (a directory, a regular file). The store itself only ever makes regular files and
directories, so a link (or a FIFO, a device, a socket) anywhere below the root is something it did
not make: reading one is refused (``LinkInStoreError``), and writing replaces the entry rather than
writing through it. Messages name the entry relative to the root, never the filesystem path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the store must not block; regular files ignore it.
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class CorruptStoreError(RuntimeError):
    """A manifest that cannot be parsed, or a blob whose size or content does not match."""


class LinkInStoreError(CorruptStoreError):
    """A symbolic link (or another entry the store never makes) where the store expected its own."""

    def __init__(self, entry: str, expected: str = "a regular file") -> None:
        super().__init__(
            f"store entry '{entry}' is not {expected} (the store does not follow links it did "
            "not make)"
        )
        self.entry = entry


def _refused(exc: OSError) -> bool:
    return exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


@contextlib.contextmanager
def opened_dir(root: Path, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of ``root/parts…``, each part opened without following links.

    With ``create`` the missing directories are made (``root`` included). FileNotFoundError when
    a part is missing and ``create`` is off; LinkInStoreError when a part is not a directory.
    """
    if create:
        Path(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            child = _subdir(fd, part, create, "/".join(parts[: depth + 1]))
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _subdir(parent: int, name: str, create: bool, label: str) -> int:
    """Open ``name`` under ``parent``, making it first if asked."""
    try:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if _refused(exc):
            raise LinkInStoreError(label, "a directory") from exc
        raise


def entry_stat(dir_fd: int, name: str) -> os.stat_result | None:
    """The entry's own status (a link is not followed); None when there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_regular(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISREG(st.st_mode)


def open_file(dir_fd: int, name: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open a regular file under ``dir_fd`` without following a link; refuse anything else."""
    try:
        fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if _refused(exc):
            raise LinkInStoreError(name) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkInStoreError(name)
    return fd


def open_path(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``open_file`` by path: the last component is not followed (its directory is trusted)."""
    path = Path(path)
    try:
        fd = os.open(path, flags | _FILE_FLAGS, mode)
    except OSError as exc:
        if _refused(exc):
            raise LinkInStoreError(path.name) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkInStoreError(path.name)
    return fd


def clear_foreign(path: Path) -> None:
    """Remove ``path`` if it is a link or anything but a regular file (never what it points to).

    For the store's scratch files (partials, sidecars, locks): an entry there that the store did
    not make is taken away, so that the next open creates the store's own file in its place.
    """
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise LinkInStoreError(path.name)
        if not stat.S_ISREG(st.st_mode):
            path.unlink()


def read_file(dir_fd: int, name: str, limit: int) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes (at most ``limit``, else CorruptStoreError) and its status."""
    fd = open_file(dir_fd, name)
    try:
        st = os.fstat(fd)
        if st.st_size > limit:
            raise CorruptStoreError(f"store entry '{name}' is larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CorruptStoreError(f"store entry '{name}' is larger than {limit} bytes")
        return data, st
    finally:
        os.close(fd)


def new_temp(dir_fd: int, prefix: str = ".tmp-") -> tuple[int, str]:
    """A new, exclusively created file under ``dir_fd``: its descriptor and name."""
    while True:
        name = f"{prefix}{secrets.token_hex(8)}"
        try:
            return open_file(dir_fd, name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), name
        except FileExistsError:
            continue


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(dir_fd: int, name: str, data: bytes, *, fsync: bool = True) -> os.stat_result:
    """Write ``name`` under ``dir_fd`` whole or not at all (temp file, rename over the entry).

    Whatever was at ``name`` (a link included) is replaced, never written through. Returns the
    new file's status.
    """
    fd, tmp = new_temp(dir_fd)
    try:
        write_all(fd, data)
        os.fchmod(fd, 0o644)
        if fsync:
            os.fsync(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return os.fstat(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)
