"""A few hundred KiB kept free next to the buffer, for the technician's way out of a full disk.

The agent writes `<buffer>.reserve` while there is room. When the disk fills up, SQLite cannot even
write the journal of a DELETE; `edge inspect purge` then removes the reserve file and deletes what it
was asked to in the space it frees. The agent writes a new reserve once space is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BYTES = 512 * 1024


def reserve_path(buffer: Path) -> Path:
    return buffer.with_name(buffer.name + ".reserve")


def ensure_reserve(buffer: Path, size: int = RESERVE_BYTES) -> bool:
    """Create the reserve if it is missing and the disk has room for it four times over."""
    path = reserve_path(buffer)
    if path.exists():
        return True
    with contextlib.suppress(OSError):
        if shutil.disk_usage(buffer.parent).free < 4 * size:
            return False
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(path)
        return True
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".tmp").unlink()
    return False


def release_reserve(buffer: Path) -> bool:
    """Delete the reserve (a full disk); True when there was one."""
    try:
        reserve_path(buffer).unlink()
    except FileNotFoundError:
        return False
    log.warning("the disk under %s is full: released the %d KiB reserve next to it", buffer, RESERVE_BYTES // 1024)
    return True
