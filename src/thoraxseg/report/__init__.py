"""The study report: one self-contained HTML file with tables, plots, overlays and 3D renders."""

from thoraxseg.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]
