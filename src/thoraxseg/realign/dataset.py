"""Writing a modified copy of a SegTHOR-layout dataset, atomically (shared by apply and corrupt).

Every file under the source folder is copied byte for byte, except the ``GT.nii.gz`` of each
labelled case, which a per-case function rewrites. The copy is built in a temporary sibling
folder and renamed into place at the end, so an error at any point leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thoraxseg.data.layout import Case, labelled_cases
from thoraxseg.errors import InputError
from thoraxseg.utils.atomic import atomic_dir
from thoraxseg.utils.progress import track


def check_destination(data: Path, out: Path, overwrite: bool, what: str = "output folder",
                      inside: str = "the input folder") -> None:
    """Refuse an output folder that exists (without ``overwrite``) or that overlaps the input.

    ``what`` and ``inside`` name the two folders in the message.
    """
    src = data.resolve()
    dst = out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise InputError(out, f"{what} must be outside {inside} {data} (and not contain it)")
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")


def rewrite_dataset(
    data: str | Path,
    out: str | Path,
    process: Callable[[Case, Path], dict[str, Any]],
    description: str,
    overwrite: bool = False,
    extra_files: Callable[[Path, list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Copy ``data`` to ``out``, letting ``process(case, new_root)`` write each case's label.

    Parameters
    ----------
    data
        Source dataset (any layout :func:`~thoraxseg.data.layout.discover_cases` accepts).
    out
        Destination folder (created atomically).
    process
        Called once per labelled case with the case (source paths) and the temporary output root;
        it must write ``new_root / case.label_path.relative_to(data)`` and return a summary row.
    description
        Progress bar text.
    overwrite
        Replace an existing ``out``.
    extra_files
        Optional ``f(new_root, rows)`` writing further files before the rename.

    Returns
    -------
    list of dict
        The rows returned by ``process``, in case order.
    """
    src = Path(data)
    dst = Path(out)
    cases = labelled_cases(src)  # raises InputError for a missing folder or no labelled case
    check_destination(src, dst, overwrite)
    rewritten = {c.label_path.resolve() for c in cases if c.label_path is not None}
    rows: list[dict[str, Any]] = []
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(src)
            (tmp / rel_dir).mkdir(parents=True, exist_ok=True)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(".") or path.resolve() in rewritten:
                    continue
                shutil.copyfile(path, tmp / rel_dir / name)
        for case in track(cases, description):
            rows.append(process(case, tmp))
        if extra_files is not None:
            extra_files(tmp, rows)
    return rows


def output_path(case_path: Path, data: Path, new_root: Path) -> Path:
    """Where a file of the source dataset goes in the copy."""
    return new_root / Path(case_path).relative_to(data)
