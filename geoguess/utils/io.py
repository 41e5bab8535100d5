"""Atomic, non-clobbering file output."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from geoguess.errors import GeoguessError


class OutputExistsError(GeoguessError, FileExistsError):
    """Refusal to overwrite a file the user already has."""


def _file_mode() -> int:
    """What `open()` would give a new file: 0o666 less the process umask (usually 0o644)."""
    return 0o666 & ~_umask()


def make_temp_dir(folder: str | Path, name: str, suffix: str) -> Path:
    """A hidden working folder beside `name` in `folder`, with the usual folder mode (0o755 less
    the umask) rather than mkdtemp's 0o700, so that renaming it into place publishes it as-is."""
    path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=folder))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_temp_file(folder: str | Path, name: str, suffix: str = ".tmp") -> Path:
    """An empty hidden temporary file in `folder`, with a normal file's permissions
    (`mkstemp` makes 0600 files, which would then be renamed into place as they are)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.fchmod(fd, _file_mode())
    os.close(fd)
    return Path(tmp_name)


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    A crash leaves either the old file or none, never half a file. Without `overwrite`, an
    existing `path` is an error (checked before and, via a hard link, at the rename).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; pass overwrite=true or choose another path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path.parent, path.name)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if someone created `path` meanwhile
            except FileExistsError:
                raise OutputExistsError(f"{path} appeared while writing; not overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)


def write_json_atomic(path: str | Path, data, overwrite: bool = False) -> Path:
    return write_text_atomic(
        path, json.dumps(data, indent=2, default=json_default) + "\n", overwrite
    )


def write_csv_atomic(path: str | Path, frame, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False), overwrite=overwrite)


def json_default(value):
    """`json.dumps(default=...)` for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
