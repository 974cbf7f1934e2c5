"""Reading a service's log: its last lines, then, when following, what is appended,
across supervisord's rotations (a rotated log is renamed, so the new file is opened)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


def read_log(path: Path, *, lines: int, follow: bool) -> Iterator[str]:
    """The last ``lines`` lines of ``path``; with ``follow``, then every line appended."""
    handle = open(path, errors="replace")
    try:
        yield from handle.readlines()[-lines:] if lines > 0 else []
        while follow:
            line = handle.readline()
            if line:
                yield line
                continue
            # supervisord rotates a log by renaming it: follow the new file.
            try:
                rotated = os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                handle.close()
                handle = open(path, errors="replace")
            else:
                time.sleep(0.2)
    finally:
        handle.close()
