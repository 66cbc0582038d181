"""The one place that defines the SegTHOR label codes.

Every module imports label codes, names and colours from here; nothing else
hard-codes ``2`` for the heart.

Examples
--------
>>> from thoraxseg.labels import Organ, ORGANS, label_name
>>> int(Organ.HEART)
2
>>> [o.name.lower() for o in ORGANS]
['esophagus', 'heart', 'trachea', 'aorta']
>>> label_name(4)
'aorta'
"""

from __future__ import annotations

from enum import IntEnum


class Organ(IntEnum):
    """SegTHOR label codes (voxel values of a ``GT.nii.gz``)."""

    BACKGROUND = 0
    ESOPHAGUS = 1
    HEART = 2
    TRACHEA = 3
    AORTA = 4


#: The four organs at risk, in label order (background excluded).
ORGANS: tuple[Organ, ...] = (Organ.ESOPHAGUS, Organ.HEART, Organ.TRACHEA, Organ.AORTA)

#: Number of classes including background (network output channels).
NUM_CLASSES: int = len(Organ)

#: Largest valid label value.
MAX_LABEL: int = max(Organ)

#: Lower-case organ names keyed by label code, background included.
LABEL_NAMES: dict[int, str] = {int(o): o.name.lower() for o in Organ}

#: Organ names in label order (no background), as used in CSV columns.
ORGAN_NAMES: tuple[str, ...] = tuple(o.name.lower() for o in ORGANS)

#: RGB colours in [0, 1] for overlays, keyed by label code.
LABEL_COLORS: dict[int, tuple[float, float, float]] = {
    int(Organ.ESOPHAGUS): (0.98, 0.75, 0.18),
    int(Organ.HEART): (0.86, 0.15, 0.20),
    int(Organ.TRACHEA): (0.20, 0.63, 0.90),
    int(Organ.AORTA): (0.55, 0.30, 0.85),
}


def label_name(code: int) -> str:
    """Return the lower-case name of a label code, e.g. ``2 -> 'heart'``.

    Raises
    ------
    KeyError
        If ``code`` is not a SegTHOR label.
    """
    return LABEL_NAMES[int(code)]


def organ_from_name(name: str) -> Organ:
    """Parse an organ from its name or its code as text (``'heart'`` or ``'2'``).

    >>> organ_from_name("Heart")
    <Organ.HEART: 2>
    >>> organ_from_name("4")
    <Organ.AORTA: 4>
    """
    text = name.strip()
    if text.isdigit():
        return Organ(int(text))
    try:
        return Organ[text.upper()]
    except KeyError:
        raise ValueError(f"unknown organ {name!r}; expected one of {', '.join(ORGAN_NAMES)}") from None
