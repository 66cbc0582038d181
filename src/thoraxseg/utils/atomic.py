"""Atomic file and folder writes: write to a temporary sibling, then rename.

A crash at any point leaves either the old file or no file — never a
half-written file under the final name.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_text_atomic(d / "a.txt", "hello")
>>> (d / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _temp_sibling(path: Path) -> Path:
    """A unique hidden temp name in the same folder that keeps the file's suffixes.

    Keeping the suffixes matters for writers that pick the format from the
    name (nibabel: ``.nii.gz``).
    """
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffixes}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error delete it.

    The parent folder is created if needed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (NaN/inf rejected) atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` hook: NumPy scalars/arrays and paths as plain JSON values."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def _temp_dir(name: str, parent: Path) -> Iterator[Path]:
    """A hidden temporary folder ``parent/.NAME.*.tmp`` with the usual permissions, removed when the block
    ends (on error too) unless the block renamed it away."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success rename it to ``path``.

    On error the temporary folder is removed and ``path`` is untouched. With
    ``overwrite``, an existing ``path`` is replaced (removed just before the
    rename); otherwise an existing ``path`` raises :class:`FileExistsError`.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists")
    with _temp_dir(final.name, final.parent) as tmp:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


@contextlib.contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success move the files written there into ``folder``.

    For commands that add files to a folder the user may already fill (``predict --out``): on
    success ``folder`` (created with its parents if missing) gets every file, same-named files
    replaced, others kept; on error nothing is moved, ``folder`` is neither created nor changed,
    and the temporary folder is removed. The temporary folder lies in ``folder``'s nearest existing
    ancestor (the same file system, so every move is a rename).
    """
    final = Path(folder)
    base = final.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    with _temp_dir(final.name, base) as tmp:
        yield tmp
        final.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, final / f.name)


@contextlib.contextmanager
def removed_on_failure(path: str | Path, keep: Callable[[Path], bool] = lambda _p: False) -> Iterator[Path]:
    """Remove the folder ``path`` again if the block fails and this call created it.

    For work folders that fill up over a long job (a training run): a job that fails before it
    wrote anything worth keeping leaves no folder behind, not even an empty one, while a job
    that fails later keeps what ``keep(path)`` says can be resumed (e.g. a checkpoint exists).
    A folder that existed before the block is never removed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> try:
    ...     with removed_on_failure(d):
    ...         d.mkdir()
    ...         raise ValueError("bad input")
    ... except ValueError:
    ...     pass
    >>> d.exists()
    False
    """
    folder = Path(path)
    new = not folder.exists()
    try:
        yield folder
    except BaseException:
        if new and folder.is_dir() and not keep(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise
