"""Finding cases in SegTHOR-style folders.

Recognised layouts under a root folder ``ROOT``:

* ``ROOT/train/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz[, GT_clean.nii.gz | GT2.nii.gz]}`` (SegTHOR training;
  the course's copy ``data/segthor_train/train/`` keeps Patient_27's clean label as ``GT2.nii.gz``)
* ``ROOT/test/Patient_XX.nii.gz`` (SegTHOR test, no labels)
* ``ROOT/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz}`` (a plain case folder directly under ROOT)
* ``ROOT/Patient_XX.nii.gz`` (a flat folder of images or predictions)
* ``ROOT`` itself being one ``Patient_XX/`` case folder

Examples
--------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "train" / "Patient_01").mkdir(parents=True)
>>> _ = (root / "train" / "Patient_01" / "Patient_01.nii.gz").write_bytes(b"")
>>> _ = (root / "train" / "Patient_01" / "GT.nii.gz").write_bytes(b"")
>>> [(c.patient_id, c.split, c.label_path.name) for c in discover_cases(root)]
[('Patient_01', 'train', 'GT.nii.gz')]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thoraxseg.data.volume import is_nifti, nifti_stem
from thoraxseg.errors import InputError

#: Name of the label file of a case folder (``GT.nii`` is accepted too).
LABEL_NAME = "GT.nii.gz"
_LABEL_FILES = ("GT.nii.gz", "GT.nii")
#: Name thoraxseg writes for a clean reference label (``phantom --corrupt-heart``, ``realign corrupt``).
CLEAN_LABEL_NAME = "GT_clean.nii.gz"
#: Name of the clean reference label in the course's SegTHOR copy (``Patient_27/GT2.nii.gz``).
COURSE_CLEAN_LABEL_NAME = "GT2.nii.gz"
#: Every accepted file name of the clean reference label, the only list of them (a folder may hold one).
CLEAN_LABEL_NAMES: tuple[str, ...] = (CLEAN_LABEL_NAME, "GT_clean.nii", COURSE_CLEAN_LABEL_NAME, "GT2.nii")
_LABEL_NAMES = {*_LABEL_FILES, *CLEAN_LABEL_NAMES}
#: The course's SegTHOR copy (``data/segthor_train/train/``): 40 patients, the clean reference is Patient_27's.
COURSE_PATIENTS: int = 40
COURSE_REFERENCE_PATIENT: str = "Patient_27"


def reference_names_text() -> str:
    """The accepted reference-label names for messages, e.g. ``'GT_clean.nii.gz or GT2.nii.gz'``.

    >>> reference_names_text()
    'GT_clean.nii.gz or GT2.nii.gz'
    """
    return " or ".join(n for n in CLEAN_LABEL_NAMES if n.endswith(".nii.gz"))


@dataclass(frozen=True)
class Case:
    """One patient: paths only (nothing is read).

    Attributes
    ----------
    patient_id
        Folder/file stem, e.g. ``"Patient_07"``.
    image_path
        The CT (int16 HU).
    label_path
        ``GT.nii.gz`` or None (test cases).
    clean_label_path
        The clean reference label when present (any of :data:`CLEAN_LABEL_NAMES`: thoraxseg's
        ``GT_clean.nii.gz`` or the course's ``GT2.nii.gz``); with ``label_path`` it is the reference
        pair for label realignment.
    split
        ``"train"``, ``"test"`` or ``""`` (plain layout).
    """

    patient_id: str
    image_path: Path
    label_path: Path | None = None
    clean_label_path: Path | None = None
    split: str = ""


def _natural_key(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _case_from_folder(folder: Path, split: str) -> Case | None:
    niftis = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    images = [p for p in niftis if p.name not in _LABEL_NAMES]
    preferred = [p for p in images if nifti_stem(p) == folder.name]
    if preferred:
        image = preferred[0]
    elif len(images) == 1:
        image = images[0]
    elif not images:
        if niftis:
            raise InputError(folder, "case folder has a label but no image file")
        return None
    else:
        raise InputError(folder, f"several candidate images: {', '.join(p.name for p in images)}")
    label = next((folder / n for n in _LABEL_FILES if (folder / n).is_file()), None)
    cleans = [folder / n for n in CLEAN_LABEL_NAMES if (folder / n).is_file()]
    if len(cleans) > 1:
        raise InputError(folder, f"several clean reference labels: {', '.join(p.name for p in cleans)} (keep one)")
    return Case(folder.name, image, label, cleans[0] if cleans else None, split)


def discover_cases(root: str | Path) -> list[Case]:
    """List the cases under ``root`` in natural patient order (see module docstring for layouts).

    Raises
    ------
    InputError
        If ``root`` does not exist or holds no recognisable case.
    """
    base = Path(root)
    if not base.exists():
        raise InputError(base, "folder not found")
    if base.is_file():
        if is_nifti(base):
            return [Case(nifti_stem(base), base)]
        raise InputError(base, "not a folder or NIfTI file")
    if any((base / n).is_file() for n in _LABEL_FILES):
        case = _case_from_folder(base, "")  # ROOT is itself one case folder
        if case:
            return [case]
    cases: list[Case] = []
    for split in ("train", "test"):
        sub = base / split
        if not sub.is_dir():
            continue
        for entry in sorted(sub.iterdir(), key=lambda p: _natural_key(p.name)):
            if entry.is_dir():
                case = _case_from_folder(entry, split)
                if case:
                    cases.append(case)
            elif entry.is_file() and is_nifti(entry) and entry.name not in _LABEL_NAMES:
                cases.append(Case(nifti_stem(entry), entry, split=split))
    for entry in sorted(base.iterdir(), key=lambda p: _natural_key(p.name)):
        if entry.name in ("train", "test") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            case = _case_from_folder(entry, "")
            if case:
                cases.append(case)
        elif entry.is_file() and is_nifti(entry) and entry.name not in _LABEL_NAMES:
            cases.append(Case(nifti_stem(entry), entry))
    if not cases:
        raise InputError(base, "no cases found (expected train/Patient_XX/, Patient_XX/ or Patient_XX.nii.gz)")
    ids = [c.patient_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(base, f"patient IDs appear more than once: {', '.join(dupes)}")
    return cases


def labelled_cases(root: str | Path) -> list[Case]:
    """Cases that have a ``GT`` label (training cases)."""
    cases = [c for c in discover_cases(root) if c.label_path is not None]
    if not cases:
        raise InputError(Path(root), "no labelled cases (no GT.nii.gz found)")
    return cases


def find_case_image(folder: str | Path, patient_id: str) -> Path:
    """Path of ``patient_id``'s NIfTI in a flat folder (``Patient_XX.nii.gz`` or ``.nii``)."""
    base = Path(folder)
    for suffix in (".nii.gz", ".nii"):
        p = base / f"{patient_id}{suffix}"
        if p.is_file():
            return p
    raise InputError(base / f"{patient_id}.nii.gz", "file not found")


# ----------------------------------------------------------------------------------------------------------------
# the study folder (written by thoraxseg.study, read by thoraxseg.report and the tests' fixture study)

#: Stage markers of a study folder: ``STUDY/.stages/<stage>.json`` (``:`` in a stage name written ``__``).
STAGE_MARKERS = ".stages"


def stage_marker(root: str | Path, stage: str) -> Path:
    """The marker file a study writes when ``stage`` completes.

    >>> stage_marker("runs/demo", "train:enet").as_posix()
    'runs/demo/.stages/train__enet.json'
    """
    return Path(root) / STAGE_MARKERS / f"{stage.replace(':', '__')}.json"


def read_stage_timings(root: str | Path,
                       problem: Callable[[Path, str], None] | None = None) -> dict[str, float]:
    """Seconds per finished stage of the study folder ``root``, in finishing order (marker times).

    A marker that cannot be read or has no stage name or seconds is skipped and passed to ``problem``.
    """
    folder = Path(root) / STAGE_MARKERS
    if not folder.is_dir():
        return {}
    rows: list[tuple[int, str, float]] = []
    for path in folder.glob("*.json"):
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if problem is not None:
                problem(path, f"unreadable JSON ({exc})")
            continue
        if isinstance(d, dict) and isinstance(d.get("stage"), str) and isinstance(d.get("seconds"), int | float):
            rows.append((path.stat().st_mtime_ns, d["stage"], float(d["seconds"])))
        elif problem is not None:
            problem(path, "no stage name or seconds")
    return {stage: secs for _, stage, secs in sorted(rows)}


@dataclass(frozen=True)
class StudyLayout:
    """Where everything lives in a study folder (``thoraxseg study --out STUDY``; see docs/dev/contracts.md).

    ``data_root``: an existing dataset the study reads in place of ``STUDY/data/raw`` (the study file's
    ``data.root``).

    >>> s = StudyLayout(Path("runs/demo"))
    >>> s.metrics("enet").as_posix(), s.marker("train:enet").as_posix()
    ('runs/demo/arms/enet/metrics.csv', 'runs/demo/.stages/train__enet.json')
    """

    root: Path
    data_root: Path | None = None

    @property
    def config(self) -> Path:
        return self.root / "study.yaml"

    @property
    def raw(self) -> Path:
        return Path(self.data_root) if self.data_root else self.root / "data" / "raw"

    @property
    def phantom_json(self) -> Path:
        return self.root / "data" / "raw" / "phantom.json"

    @property
    def fixed(self) -> Path:
        return self.root / "data" / "fixed"

    @property
    def trainset(self) -> Path:
        return self.root / "data" / "trainset"

    @property
    def testset(self) -> Path:
        return self.root / "data" / "testset"

    @property
    def split(self) -> Path:
        return self.root / "data" / "split.json"

    @property
    def check(self) -> Path:
        return self.root / "check.json"

    @property
    def check_fixed(self) -> Path:
        return self.root / "check_fixed.json"

    @property
    def realign(self) -> Path:
        return self.root / "realign"

    @property
    def qa(self) -> Path:
        return self.realign / "qa"

    @property
    def arms(self) -> Path:
        return self.root / "arms"

    def arm(self, name: str) -> Path:
        return self.arms / name

    def run(self, arm: str) -> Path:
        return self.arm(arm) / "run"

    def pred(self, arm: str) -> Path:
        return self.arm(arm) / "pred"

    def metrics(self, arm: str) -> Path:
        return self.arm(arm) / "metrics.csv"

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def markers(self) -> Path:
        return self.root / STAGE_MARKERS

    def marker(self, stage: str) -> Path:
        return stage_marker(self.root, stage)
