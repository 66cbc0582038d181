"""Sections on the data: the dataset check, the label fix (realignment) and label QA.
"""


from typing import Any

from thoraxseg.data.layout import reference_names_text
from thoraxseg.report import figures
from thoraxseg.report.context import ReportContext
from thoraxseg.report.markup import (
    FIX_FIELDS,
    check_badge,
    check_html,
    esc,
    figure_html,
    find_key,
    fmt_json_scalar,
    json_block,
    kv_table,
    not_run,
    table_html,
)


class DataSections(ReportContext):
    """Dataset and check; label fix; QA."""

    def sec_data(self) -> str:
        c = self.s.check
        if not isinstance(c, dict):
            return not_run("The dataset check (check.json) was not run for this study.")
        parts = [f"<p>Result of <code>thoraxseg check</code> on <code>data/raw</code>: {check_badge(c)}</p>",
                 check_html(c)]
        after = self.s.check_fixed
        if isinstance(after, dict):
            parts.append(f"<h3>After the label fix (check_fixed.json): {check_badge(after)}</h3>"
                         + check_html(after, only_flagged=True))
        return "".join(parts)

    def sec_realign(self) -> str:
        fix = self.s.fix
        if isinstance(self.s.qa, dict):
            return self.sec_qa()
        if not isinstance(fix, dict):
            return not_run("Label realignment was not run (no reference pair with a moved label, or "
                           "realign.enabled: false).")
        items = []
        for label, pats in FIX_FIELDS:
            hit = find_key(fix, pats)
            if hit:
                items.append((label, esc(fmt_json_scalar(hit[1]))))
        shown = kv_table(items) if items else ""
        details = f"<details><summary>All fields of realign/fix.json</summary>{json_block(fix)}</details>"
        fig = self.realign_figure()
        apply_html = ""
        if self.s.apply is not None:
            rows = self.s.apply.get("patients", self.s.apply) if isinstance(self.s.apply, dict) else self.s.apply
            apply_html = f"<h3>Applied to the dataset (realign/apply.json)</h3>{json_block(rows)}"
        else:
            apply_html = not_run("realign/apply.json is missing (the correction was not applied to the dataset).")
        return (f'<div class="grid2"><div><h3>Estimated transform (realign/fix.json)</h3>{shown}{details}'
                f"</div><div>{fig}</div></div>{apply_html}")

    def sec_qa(self) -> str:
        """Label QA against a trained model's predictions (``realign/qa/qa.json``, ``realign.method: qa``)."""
        # imported on use: importing the report needs none of the QA machinery
        from thoraxseg.qa.assess import verdict_text

        qa = self.s.qa
        summary = qa.get("summary") or {}
        ref = qa.get("reference") or {}
        counts = ", ".join(f"{n} {v}" for v, n in (summary.get("verdicts") or {}).items() if n)
        intro = (f"<p>Every label was judged against the prediction of the trained run "
                 f"<code>{esc(ref.get('run', ref.get('kind', '?')))}</code> (no clean label needed): "
                 f"{esc(summary.get('patients', '?'))} patient(s), {esc(counts or 'no organs')}. Flagged: "
                 f"{esc(', '.join(summary.get('flagged_patients') or []) or 'none')}; fixed (rigid fit accepted by "
                 f"the gate): {esc(', '.join(summary.get('fixed_patients') or []) or 'none')}.</p>")
        header = ["patient", "organ", "verdict", "Dice", "Dice after fit", "centroid Δ mm", "volume ratio",
                  "HD95 mm", "on air", "fit rotation °", "fit move mm", "note"]
        rows, classes = [], []

        def f(v: Any, fmt: str = ".3f") -> str:
            return "—" if v is None else format(v, fmt)

        for p in qa.get("patients") or []:
            for r in p.get("organs") or []:
                if r.get("verdict") == "absent":
                    continue
                rows.append([p.get("patient", "?"), r.get("organ", "?"), verdict_text(r), f(r.get("dice")),
                             f(r.get("dice_after")), f(r.get("centroid_offset_mm"), ".1f"),
                             f(r.get("volume_ratio"), ".2f"), f(r.get("hd95_mm"), ".1f"),
                             "—" if r.get("air_fraction") is None else f"{r['air_fraction']:.1%}",
                             f(r.get("fit_rotation_deg"), ".1f"), f(r.get("fit_move_mm"), ".1f"), r.get("note") or ""])
                classes.append("" if r.get("verdict") == "consistent" else "flag")
        table = table_html(header, rows, classes, left_cols=3, wrap_cols=(11,))
        figs = "".join(figure_html(png, f"qa overlay {name}", f"{esc(name)}: label before (red), after the fix "
                                   "(yellow) and the reference prediction (green) (realign/qa/overlays).")
                       for name, png in self.s.qa_overlays.items())
        figs = f'<div class="grid2">{figs}</div>' if figs else not_run("No organ was found misplaced: no overlays.")
        gate = f"<details><summary>Gate thresholds (qa.json)</summary>{json_block(qa.get('gate') or {})}</details>"
        return f"<h3>Label QA (realign/qa/qa.csv)</h3>{intro}{table}{gate}<h3>Before/after</h3>{figs}"

    def realign_figure(self) -> str:
        s = self.s
        if s.overlay_png:
            return figure_html(s.overlay_png, "label fix before/after",
                               "Before/after overlay of the reference patient (realign/overlay.png).")
        raw_label = s.fix.get("label", 2) if isinstance(s.fix, dict) else 2
        label = int(raw_label) if str(raw_label).isdigit() else 2
        ref = next((c for c in s.raw_cases() if c.clean_label_path is not None and c.label_path is not None), None)
        if ref is None:
            return not_run(f"No reference pair (GT.nii.gz + {reference_names_text()}) in data/raw: "
                           "no before/after overlay.")
        fixed = next((c for c in s.fixed_cases() if c.patient_id == ref.patient_id and c.label_path), None)
        if fixed is None:
            return not_run(f"data/fixed has no GT for {ref.patient_id}: no before/after overlay.")
        ct = self.volume("ct", ref.image_path, False)
        moved = self.volume("gt", ref.label_path, True).array  # type: ignore[arg-type]
        clean = self.volume("gt", ref.clean_label_path, True).array  # type: ignore[arg-type]
        fixed_arr = self.volume("gt", fixed.label_path, True).array  # type: ignore[arg-type]
        png = figures.realign_overlay_png(ct, moved, fixed_arr, clean, label, ref.patient_id)
        return figure_html(png, "label fix before/after",
                           f"{esc(ref.patient_id)}: clean reference label (solid) against the moved label from "
                           f"data/raw (left) and the corrected label from data/fixed (right); IoU in 3D.")
