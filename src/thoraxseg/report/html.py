"""The study report: one self-contained HTML file (``thoraxseg report``).

Everything is inline — CSS in a ``<style>`` element, every figure a base64 PNG
``data:`` URI — and the page has no script and no external URL, so it opens
offline in any browser and can be mailed as one file. Sections whose stage did
not run (no realignment, no training logs, no comparison, …) say so instead of
failing. See :func:`build_report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from thoraxseg import __version__
from thoraxseg.errors import ThoraxsegError
from thoraxseg.report.markup import esc
from thoraxseg.report.sections.data import DataSections
from thoraxseg.report.sections.overview import OverviewSections
from thoraxseg.report.sections.results import ResultSections
from thoraxseg.report.sections.runs import RunSections
from thoraxseg.report.study import Study, load_study
from thoraxseg.utils.atomic import write_text_atomic
from thoraxseg.utils.progress import make_progress

#: The page's style sheet (package data ``report.css``), inlined into every report.
CSS = (resources.files("thoraxseg.report") / "report.css").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Section:
    """One section of the page: anchor, its word in the navigation bar, its heading, and its builder method."""

    key: str
    nav: str
    title: str
    builder: str  #: name of a ``_Report`` method returning the section's HTML


#: The report's sections in page order: the navigation bar and the page body both come from here.
SECTIONS: tuple[Section, ...] = (
    Section("data", "Dataset and check", "Dataset and check", "sec_data"),
    Section("realign", "Label fix", "Label fix (realignment)", "sec_realign"),
    Section("metrics", "Metrics per arm", "Metrics per arm (test set)", "sec_metrics"),
    Section("distributions", "Distributions", "Distributions per organ", "sec_distributions"),
    Section("statistics", "Statistics", "Statistical comparison", "sec_statistics"),
    Section("training", "Training", "Training curves", "sec_training"),
    Section("cases", "Best and worst cases", "Best and worst cases per arm", "sec_cases"),
    Section("surfaces", "3D surfaces", "3D surface renders", "sec_surfaces"),
    Section("timings", "Run time", "Run time per stage", "sec_timings"),
    Section("config", "Configuration", "Study configuration", "sec_config"),
)


class _Report(OverviewSections, DataSections, ResultSections, RunSections):
    """One report: the section groups' builders over one :class:`~thoraxseg.report.context.ReportContext`."""

    def nav(self) -> str:
        links = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in (("overview", "Overview"),
                                                                     *((s.key, s.nav) for s in SECTIONS)))
        return f'<nav class="toc"><div class="wrap">{links}</div></nav>'

    def render(self) -> str:
        body = []
        with make_progress() as progress:
            task = progress.add_task("building report", total=len(SECTIONS) + 1)
            body.append(self.overview())
            progress.advance(task)
            for sec in SECTIONS:
                progress.update(task, description=f"report: {sec.title}")
                try:
                    content = getattr(self, sec.builder)()
                except ThoraxsegError as exc:
                    content = f'<p class="problem">This section could not be built: {esc(exc)}</p>'
                body.append(f'<section id="{sec.key}"><h2>{esc(sec.title)}</h2>{content}</section>')
                progress.advance(task)
        footer = (f"<footer>thoraxseg {esc(__version__)} · self-contained report: every figure is embedded, "
                  f"no network access needed.</footer>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>thoraxseg report — {esc(self.s.root.name)}</title><style>{CSS}</style></head><body>"
                f"{self.header()}{self.nav()}<main><div class=\"wrap\">{''.join(body)}</div></main>{footer}"
                "</body></html>\n")



def render_report(study: str | Path | Study) -> str:
    """The report's HTML text for a study folder (or a loaded :class:`Study`)."""
    st = study if isinstance(study, Study) else load_study(study)
    return _Report(st).render()


def build_report(study: str | Path, out: str | Path | None = None) -> Path:
    """Build the self-contained HTML report of a study folder and write it atomically.

    Parameters
    ----------
    study
        The study folder (layout of ``thoraxseg study``; missing stages are reported as "not run").
    out
        Output HTML file; default ``STUDY/report.html``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        If ``study`` is not a folder.
    """
    st = load_study(study)
    target = Path(out) if out is not None else st.layout.report
    write_text_atomic(target, render_report(st))
    return target
