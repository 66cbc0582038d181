"""What a command wrote to stderr, without its progress lines (off a terminal every bar prints plain lines)."""

from __future__ import annotations

import re

#: ``description: done/total (elapsed[, ~ETA left])`` — :class:`thoraxseg.utils.progress.LineProgress`'s lines.
PROGRESS_LINE = re.compile(r"^.+: \d+(/\d+)? \(\d+:\d\d(:\d\d)?(, ~\d+:\d\d(:\d\d)? left)?\)$")


def messages(err: str) -> list[str]:
    """The non-blank lines of ``err`` that are not progress lines.

    >>> messages("checking: 3/3 (0:00)\\n\\nthoraxseg: error: x.nii.gz: truncated\\n")
    ['thoraxseg: error: x.nii.gz: truncated']
    """
    return [ln for ln in err.splitlines() if ln.strip() and not PROGRESS_LINE.match(ln)]
