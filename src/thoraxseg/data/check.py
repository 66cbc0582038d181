"""Dataset validation: readable files, matching geometry, valid labels, plausible label placement.

Errors (the case is unusable): unreadable/truncated/corrupt file, image/label shape
or geometry mismatch (spacing, origin, direction within a tolerance), labels
outside 0–4, NaN/inf voxels, empty (constant) image, missing label file.

Warnings (the case is usable but suspicious): an organ label that sits where its
tissue cannot be — measured as the **air fraction**, the share of the label's
voxels whose CT value is below :data:`AIR_HU` (−400 HU: lung parenchyma and
outside air), and the mean HU inside the label. The heart, aorta and esophagus
are soft tissue (contrast-enhanced or not), so a high air fraction means the
label was moved onto the lungs or out of the body (the SegTHOR course
corruption). The trachea label is the air lumen, so for it a *low* air fraction
is suspicious. Organs absent from a label file are reported as a note.

A case with a clean reference label next to its ``GT.nii.gz`` (``GT_clean.nii.gz``, or
``GT2.nii.gz`` in the course's copy: any of
:data:`thoraxseg.data.layout.CLEAN_LABEL_NAMES`) is a **reference pair**: both labels are measured,
the one on air is reported as the moved one (a note), the clean one is never warned about, and a
pair where neither label looks moved is said to need no fix (:func:`pair_verdict`).

Examples
--------
>>> import numpy as np
>>> ct = np.full((4, 4, 4), 40, np.int16); ct[:2] = -850
>>> lab = np.zeros((4, 4, 4), np.uint8); lab[1:3] = 2
>>> label_air_fraction(ct, lab, 2)
0.5
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from thoraxseg.data.layout import Case, discover_cases
from thoraxseg.data.volume import Volume, load_image, load_label, same_geometry
from thoraxseg.errors import InputError
from thoraxseg.labels import ORGANS, Organ, label_name
from thoraxseg.utils.progress import console, make_progress

#: CT values below this (HU) count as air (lung parenchyma, airways, outside the body).
AIR_HU: float = -400.0

#: Largest acceptable air fraction per soft-tissue organ before a warning.
MAX_AIR_FRACTION: dict[int, float] = {
    int(Organ.ESOPHAGUS): 0.35,  # may hold a small air lumen
    int(Organ.HEART): 0.08,
    int(Organ.AORTA): 0.08,
}
#: Smallest acceptable air fraction for the trachea (its label is the air lumen).
MIN_TRACHEA_AIR_FRACTION: float = 0.5


def label_air_fraction(ct: np.ndarray, labels: np.ndarray, organ: int, air_hu: float = AIR_HU) -> float:
    """Fraction of ``organ``'s voxels whose CT value is below ``air_hu`` (HU).

    ``ct`` and ``labels`` share a grid (any axis order). Returns NaN when the organ is absent.
    """
    mask = labels == organ
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    return float(np.count_nonzero(ct[mask] < air_hu)) / n


@dataclass
class OrganPlacement:
    """Where one organ label sits on the CT."""

    organ: str
    voxels: int
    volume_ml: float
    mean_hu: float
    air_fraction: float
    suspicious: bool


@dataclass
class ReferencePair:
    """The two labels of a reference pair: ``GT.nii.gz`` (placements in ``CaseReport.organs``) and the clean one."""

    label: str  #: path of GT.nii.gz
    clean: str  #: path of the clean reference label (GT_clean.nii.gz or GT2.nii.gz)
    clean_organs: list[OrganPlacement] = field(default_factory=list)  #: placements of the clean label
    differing: list[str] = field(default_factory=list)  #: organs whose voxels differ between the two labels


#: :func:`pair_verdict` values: which label of a reference pair sits on air for one organ.
VERDICTS: tuple[str, ...] = ("label-moved", "neither-moved", "clean-moved", "both-moved", "absent")


@dataclass
class CaseReport:
    """Validation result of one case (``reference`` is set for a reference pair)."""

    patient_id: str
    image: str
    label: str | None
    shape: list[int] | None = None
    spacing_mm: list[float] | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    organs: list[OrganPlacement] = field(default_factory=list)
    reference: ReferencePair | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def status(self) -> str:
        return "error" if self.errors else ("warning" if self.warnings else "ok")


@dataclass
class CheckReport:
    """Validation result of a dataset."""

    root: str
    cases: list[CaseReport]
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no case (and no dataset-level problem) has an error. Warnings do not count."""
        return not self.errors and all(c.ok for c in self.cases)

    @property
    def n_warnings(self) -> int:
        return sum(1 for c in self.cases if c.warnings)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "n_cases": len(self.cases),
            "n_errors": sum(1 for c in self.cases if c.errors) + len(self.errors),
            "n_warnings": self.n_warnings,
            "errors": self.errors,
            "cases": [{**asdict(c), "status": c.status} for c in self.cases],
        }


def organ_placement(ct: np.ndarray, labels: np.ndarray, voxel_ml: float) -> list[OrganPlacement]:
    """Mean HU and air fraction of every organ present in ``labels``."""
    out: list[OrganPlacement] = []
    for organ in ORGANS:
        mask = labels == organ
        n = int(mask.sum())
        if n == 0:
            continue
        values = ct[mask]
        air = float(np.count_nonzero(values < AIR_HU)) / n
        if organ == Organ.TRACHEA:
            suspicious = air < MIN_TRACHEA_AIR_FRACTION
        else:
            suspicious = air > MAX_AIR_FRACTION[int(organ)]
        out.append(OrganPlacement(label_name(organ), n, round(n * voxel_ml, 3), round(float(values.mean()), 1),
                                  round(air, 4), bool(suspicious)))
    return out


def _placement_warning(p: OrganPlacement) -> str:
    if p.organ == "trachea":
        return (f"trachea label looks misplaced: only {p.air_fraction:.0%} of it on air "
                f"(mean {p.mean_hu:.0f} HU; the trachea label should be the air lumen)")
    return (f"{p.organ} label looks misplaced: {p.air_fraction:.0%} of it on air "
            f"(< {AIR_HU:.0f} HU; mean {p.mean_hu:.0f} HU, expected soft tissue)")


def pair_verdict(label_organs: list[OrganPlacement], pair: ReferencePair, organ: str) -> str:
    """Which label of a reference pair looks moved for ``organ`` (a name from ``thoraxseg.labels``).

    ``label_organs`` are the placements of ``GT.nii.gz`` (``CaseReport.organs``). Returns one of
    :data:`VERDICTS`: ``"label-moved"`` (``GT.nii.gz`` on air, the reference not: the pair to estimate
    the fix on), ``"neither-moved"`` (the organ is the same in both labels, or neither is on air:
    nothing to fix), ``"clean-moved"`` (the reference is the one on air: the pair is the wrong way
    round), ``"both-moved"`` (no clean reference) or ``"absent"`` (missing from one of the labels).
    An organ that is the same in both labels is judged ``"neither-moved"`` even where ``check`` flags
    it: the pair says nothing about it.

    >>> on = OrganPlacement("heart", 10, 1.0, -500.0, 0.4, True)
    >>> off = OrganPlacement("heart", 10, 1.0, 60.0, 0.0, False)
    >>> pair = ReferencePair("GT.nii.gz", "GT2.nii.gz", [off], differing=["heart"])
    >>> pair_verdict([on], pair, "heart"), pair_verdict([off], pair, "heart"), pair_verdict([], pair, "heart")
    ('label-moved', 'neither-moved', 'absent')
    """
    a = next((p for p in label_organs if p.organ == organ), None)
    b = next((p for p in pair.clean_organs if p.organ == organ), None)
    if a is None or b is None:
        return "absent"
    if organ not in pair.differing:
        return "neither-moved"
    return {(True, False): "label-moved", (False, False): "neither-moved", (False, True): "clean-moved",
            (True, True): "both-moved"}[(a.suspicious, b.suspicious)]


def _pair_messages(rep: CaseReport, pair: ReferencePair) -> None:
    """Add the note (or warning) saying which label of a reference pair is the moved one."""
    label_name_, clean_name = Path(pair.label).name, Path(pair.clean).name
    where = f"{Path(pair.label).parent}: reference pair {label_name_} + {clean_name}"
    label_air = {p.organ: p.air_fraction for p in rep.organs}
    clean_air = {p.organ: p.air_fraction for p in pair.clean_organs}
    verdicts = {o: pair_verdict(rep.organs, pair, o) for o in pair.differing}

    def air(organs: list[str]) -> str:
        return ", ".join(f"{o} {label_air[o]:.0%} in {label_name_}, {clean_air[o]:.0%} in {clean_name}"
                         for o in organs if o in label_air and o in clean_air)

    moved = [o for o, v in verdicts.items() if v == "label-moved"]
    swapped = [o for o, v in verdicts.items() if v == "clean-moved"]
    both = [o for o, v in verdicts.items() if v == "both-moved"]
    if both:
        rep.warnings.append(f"{where}: both labels look moved (on air: {air(both)}): no clean reference")
    if swapped:
        rep.warnings.append(f"{where}: {clean_name} is the one on air, not {label_name_} "
                            f"(on air: {air(swapped)}): the pair is the wrong way round")
    if both or swapped:
        return
    if moved:
        rep.notes.append(f"{where}: {label_name_} is the moved label, {clean_name} the clean reference "
                         f"(on air: {air(moved)})")
    elif pair.differing:
        rep.notes.append(f"{where}: neither label looks moved (on air: {air(pair.differing)}): nothing to fix")
    else:
        rep.notes.append(f"{where}: the two labels are identical: nothing to fix")


def check_case(case: Case, require_label: bool | None = None) -> CaseReport:
    """Validate one case; never raises for bad input (problems go into the report).

    Parameters
    ----------
    case
        The case to check.
    require_label
        Whether a missing ``GT.nii.gz`` is an error. Default: required unless the case is in a ``test`` split.
    """
    if require_label is None:
        require_label = case.split != "test"
    rep = CaseReport(case.patient_id, str(case.image_path), str(case.label_path) if case.label_path else None)
    image: Volume | None = None
    try:
        image = load_image(case.image_path)
        rep.shape = list(image.shape)
        rep.spacing_mm = [round(s, 4) for s in image.spacing]
    except InputError as exc:
        rep.errors.append(str(exc))
    labels_to_check = [p for p in (case.label_path, case.clean_label_path) if p is not None]
    if case.label_path is None and require_label:
        folder = case.image_path.parent
        rep.errors.append(f"{folder / 'GT.nii.gz'}: missing label file")
    first: np.ndarray | None = None  # GT.nii.gz's array, compared with the clean reference's
    for label_path in labels_to_check:
        try:
            label = load_label(label_path)
        except InputError as exc:
            rep.errors.append(str(exc))
            continue
        if image is None:
            continue
        diff = same_geometry(image, label)
        if diff is not None:
            rep.errors.append(f"{label_path}: geometry differs from image {case.image_path.name}: {diff}")
            continue
        placements = organ_placement(image.array, label.array, image.voxel_volume_ml)
        if label_path != case.label_path:  # the clean reference: measured, never warned about
            if first is not None:
                differing = [label_name(o) for o in ORGANS
                             if not np.array_equal(first == int(o), label.array == int(o))]
                rep.reference = ReferencePair(str(case.label_path), str(label_path), placements, differing)
            continue
        first = label.array
        rep.organs = placements
        for p in placements:
            if p.suspicious:
                rep.warnings.append(f"{label_path}: {_placement_warning(p)}")
        present = {p.organ for p in placements}
        absent = [label_name(o) for o in ORGANS if label_name(o) not in present]
        if len(absent) == len(ORGANS):
            rep.warnings.append(f"{label_path}: label volume is empty (no organ labelled)")
        elif absent:
            rep.notes.append(f"{label_path}: organs absent: {', '.join(absent)}")
    if rep.reference is not None and not rep.errors:
        _pair_messages(rep, rep.reference)
    return rep


def check_dataset(root: str | Path, workers: int = 1, progress: bool = True) -> CheckReport:
    """Validate every case under ``root`` (any layout :func:`~thoraxseg.data.layout.discover_cases` reads).

    A root that cannot be read at all gives a report with a dataset-level error and no cases.
    """
    try:
        cases = discover_cases(root)
    except InputError as exc:
        return CheckReport(str(root), [], [str(exc)])
    reports: list[CaseReport] = []
    with make_progress() as bar:
        task = bar.add_task("checking", total=len(cases), visible=progress)
        if workers > 1 and len(cases) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for rep in pool.map(check_case, cases):
                    reports.append(rep)
                    bar.advance(task)
        else:
            for case in cases:
                reports.append(check_case(case))
                bar.advance(task)
    return CheckReport(str(root), reports)


def _heart_cell(heart: OrganPlacement | None, pair: ReferencePair | None) -> str:
    """``41%``, or ``41% (GT2.nii.gz 0%)`` for a reference pair."""
    cell = f"{heart.air_fraction:.0%}" if heart else "-"
    clean = next((o for o in pair.clean_organs if o.organ == "heart"), None) if pair else None
    if pair is not None and clean is not None:
        cell += f" ({Path(pair.clean).name} {clean.air_fraction:.0%})"
    return cell


def print_report(report: CheckReport) -> None:
    """Print the per-case table (stdout) and one line per problem (errors to stderr)."""
    table = Table(title=f"check: {report.root}", show_lines=False)
    for col in ("patient", "shape", "spacing (mm)", "organs (mL)", "heart on air", "status"):
        table.add_column(col)
    for c in report.cases:
        organs = ", ".join(f"{o.organ[:3]} {o.volume_ml:.0f}" for o in c.organs) or "-"
        heart = next((o for o in c.organs if o.organ == "heart"), None)
        style = {"ok": "green", "warning": "yellow", "error": "red"}[c.status]
        table.add_row(
            c.patient_id,
            "×".join(map(str, c.shape)) if c.shape else "-",
            "×".join(f"{s:.3g}" for s in c.spacing_mm) if c.spacing_mm else "-",
            organs,
            _heart_cell(heart, c.reference),
            f"[{style}]{c.status}[/{style}]",
        )
    if report.cases:
        console.print(table)
    for line in report.errors:
        print(f"thoraxseg: error: {line}", file=sys.stderr)
    for c in report.cases:
        for line in c.errors:
            print(f"thoraxseg: error: {line}", file=sys.stderr)
        for line in c.warnings:
            console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)
        for line in c.notes:
            console.print(f"note: {line}", soft_wrap=True)
    n_err = sum(1 for c in report.cases if c.errors) + len(report.errors)
    console.print(f"{len(report.cases)} case(s): {n_err} with errors, {report.n_warnings} with warnings")
