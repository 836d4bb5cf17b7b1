"""File writes whose failures are plain ``OSError``s with their errno, and fsync helpers.

``torch.save`` and ``safetensors`` report a failed write (ENOSPC: a full disk) as their own exceptions
without the errno; :func:`write_file` writes through a file object that remembers the ``OSError`` and raises
that instead, so callers can tell a full disk from a bug; :func:`os_error_of` finds the ``OSError`` behind
such an exception when the writing was a library's (``save_pretrained``). :func:`fsync_path` flushes a file
or a folder's entries (after ``os.replace`` into it) to the disk.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


class _File:
    """A binary file being written that keeps the first ``OSError`` of its writes: ``torch.save`` turns a
    failed write (a full disk) into a ``RuntimeError`` about zip positions, losing the errno."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def _guard(self, op, *args):
        try:
            return op(*args)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def write(self, data) -> int:
        return self._guard(self.raw.write, data)

    def flush(self) -> None:
        self._guard(self.raw.flush)


def write_file(path: Path, fill, fsync: bool = True) -> None:
    """Create ``path`` with ``fill(f)`` (``f`` has ``write`` and ``flush``), flushed and (by default) fsynced.

    A failed write raises its own ``OSError`` (errno intact) whichever library was writing."""
    with open(path, "wb") as raw:
        f = _File(raw)
        try:
            fill(f)
            f.flush()
            if fsync:
                os.fsync(raw.fileno())
        except OSError:
            raise
        except Exception as exc:
            if f.error is not None:
                raise f.error from exc
            raise


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: its entries, e.g. after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error_of(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind an exception raised while writing, or None: ``exc`` itself, one in its
    ``__cause__``/``__context__`` chain (``torch.save``), or the errno of a Rust I/O error quoted in its
    message (``safetensors``: "... No space left on device (os error 28)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None
