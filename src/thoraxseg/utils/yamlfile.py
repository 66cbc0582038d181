"""Reading YAML settings files with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from thoraxseg.errors import ConfigError, InputError


def read_yaml_mapping(path: str | Path, error: type[ConfigError] | type[InputError] = ConfigError,
                      missing: str = "config file not found") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file gives ``{}``).

    Parameters
    ----------
    path
        The file.
    error
        Exception raised when the file is missing, not YAML or not a mapping
        (:class:`~thoraxseg.errors.ConfigError` or :class:`~thoraxseg.errors.InputError`);
        its message is ``"<path>: <problem>"`` on one line.
    missing
        The problem stated when the file does not exist.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("epochs: 3\\n")
    >>> read_yaml_mapping(p)
    {'epochs': 3}
    >>> _ = p.write_text("- 1\\n")
    >>> read_yaml_mapping(p)
    Traceback (most recent call last):
    ...
    thoraxseg.errors.ConfigError: ...c.yaml: expected a mapping of settings, got list
    """
    p = Path(path)

    def fail(problem: str) -> Exception:
        return error(p, problem) if error is InputError else error(f"{p}: {problem}")

    if not p.is_file():
        raise fail(missing)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise fail(f"expected a mapping of settings, got {type(data).__name__}")
    return data
