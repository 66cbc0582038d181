"""Reading and writing ``fix.json``, the estimated label correction.

Only ``matrix_voxel`` (and optionally ``label``) is needed to apply a fix; the rest of the file
documents it (see :func:`thoraxseg.realign.estimate.estimate_transform`). A file that is not
JSON, lacks ``matrix_voxel``, or holds a matrix that is not a finite, invertible 4×4 affine
matrix (last row ``0 0 0 1``) raises :class:`~thoraxseg.errors.InputError` naming the file.

Examples
--------
>>> import numpy as np
>>> m = load_transform({"matrix_voxel": np.eye(4).tolist(), "label": 2})
>>> m.label, m.matrix.shape
(2, (4, 4))
>>> load_transform({"label": 2})
Traceback (most recent call last):
...
thoraxseg.errors.InputError: <transform>: missing field 'matrix_voxel'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.errors import InputError
from thoraxseg.utils.atomic import json_default, write_text_atomic


@dataclass
class Fix:
    """A parsed correction.

    Attributes
    ----------
    matrix
        4×4 voxel matrix, output voxel → input voxel (apply to the moved label).
    label
        Label code stored in the file, or None.
    shape
        Grid shape ``(x, y, z)`` of the reference pair, or None.
    content
        The whole parsed dictionary.
    """

    matrix: np.ndarray
    label: int | None = None
    shape: tuple[int, int, int] | None = None
    content: dict[str, Any] = field(default_factory=dict)


def load_transform(source: dict[str, Any] | str | Path) -> Fix:
    """Parse and validate a ``fix.json`` (path) or its content (dict).

    Raises
    ------
    InputError
        Missing or unreadable file, invalid JSON, missing or malformed ``matrix_voxel``.
    """
    where: Path
    if isinstance(source, dict):
        where, content = Path("<transform>"), source
    else:
        where = Path(source)
        if not where.is_file():
            raise InputError(where, "file not found" if not where.exists() else "not a file")
        try:
            content = json.loads(where.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(where, "not a text (JSON) file") from None
        except json.JSONDecodeError as exc:
            raise InputError(where, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(content, dict):
        raise InputError(where, f"expected a JSON object, got {type(content).__name__}")
    if "matrix_voxel" not in content:
        raise InputError(where, "missing field 'matrix_voxel'")
    try:
        matrix = np.asarray(content["matrix_voxel"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, "field 'matrix_voxel' is not a numeric 4x4 matrix") from None
    if matrix.shape != (4, 4):
        raise InputError(where, f"field 'matrix_voxel' must be 4x4, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise InputError(where, "field 'matrix_voxel' has NaN/inf entries")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-9):
        raise InputError(where, "field 'matrix_voxel' is not affine (last row must be 0 0 0 1)")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise InputError(where, "field 'matrix_voxel' is singular (not invertible)")
    label = content.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= 255):
        raise InputError(where, f"field 'label' must be an integer 1-255, got {label!r}")
    shape = content.get("shape")
    grid: tuple[int, int, int] | None = None
    if shape is not None:
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise InputError(where, f"field 'shape' must be three positive integers, got {shape!r}")
        grid = (shape[0], shape[1], shape[2])
    return Fix(matrix, label, grid, content)


def save_transform(content: dict[str, Any], path: str | Path) -> None:
    """Write ``fix.json`` atomically: indented, one matrix row or vector per line, no NaN.

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "fix.json"
    >>> save_transform({"matrix_voxel": [[1.0, 0.0], [0.0, 1.0]], "label": 2}, p)
    >>> print(p.read_text().strip())
    {
      "matrix_voxel": [
        [1.0, 0.0],
        [0.0, 1.0]
      ],
      "label": 2
    }
    >>> json.loads(p.read_text())["label"]
    2
    """
    text = json.dumps(content, indent=2, allow_nan=False, default=json_default)
    text = _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    write_text_atomic(path, text + "\n")


#: An innermost JSON list of numbers spread over several lines by ``json.dumps(indent=...)``.
_FLAT_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.eE+-]*\s*,\s*)*-?[0-9][0-9.eE+-]*)\s*\]")

