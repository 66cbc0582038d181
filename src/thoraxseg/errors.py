"""Exceptions whose message is the one line shown to the user.

The CLI catches :class:`ThoraxsegError` and prints ``thoraxseg: error: <message>``
with a non-zero exit, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ThoraxsegError(Exception):
    """Base class for expected, user-facing failures (bad input, bad config)."""


class InputError(ThoraxsegError):
    """A file or folder given as input is unusable.

    The message always names the file and the problem, on one line.

    >>> str(InputError("/data/GT.nii.gz", "labels outside 0-4: [7]"))
    '/data/GT.nii.gz: labels outside 0-4: [7]'
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # rebuild from (path, problem) so the error survives a trip back from a worker process
        return (type(self), (self.path, self.problem))


class ConfigError(ThoraxsegError):
    """A configuration file or option is invalid."""
