"""Atomic file writes with the umask's normal mode: every file the project writes goes through here."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable


def current_umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through a uniquely named temp file in the same folder, then rename it into place.

    ``write(tmp_path)`` fills the temp file. A crash leaves either the old file or the new one, never
    half of one; several processes may write the same path at once. The result gets the mode a plain
    ``open(path, "w")`` would give (0666 minus the umask): ``mkstemp``'s 0600 would hide it from the
    other users of a shared folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_or_enospc(write, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


FULL_DISK_BYTES = 1 << 20  # free space below which a failed write is taken for a full disk


def _write_or_enospc(write: Callable[[str], None], tmp: str) -> None:
    """``write(tmp)``; a writer that reports a full disk as something else (torch.save raises a
    RuntimeError "iostream error") is turned into the OSError ENOSPC the commands report in one line."""
    try:
        write(tmp)
    except RuntimeError:
        stat = os.statvfs(os.path.dirname(tmp) or ".")
        if stat.f_bavail * stat.f_frsize < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.dirname(tmp)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for text (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
