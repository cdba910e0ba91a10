"""Reports of boundkit results: JSON, CSV, figures, Markdown and self-contained HTML.

``render_report("results.json", "out/")`` writes everything at once; the pieces are
available separately (:func:`write_json`, :func:`write_csv`, :func:`plot_scatter`,
:func:`plot_cdf`, :func:`plot_waterfall`, :func:`plot_comparison`,
:func:`write_markdown_report`, :func:`write_html_report`).
"""

from __future__ import annotations

from boundkit.report.documents import render_report, write_html_report, write_markdown_report
from boundkit.report.figures import plot_cdf, plot_comparison, plot_scatter, plot_waterfall
from boundkit.report.io import read_json, write_csv, write_json

__all__ = [
    "plot_cdf",
    "plot_comparison",
    "plot_scatter",
    "plot_waterfall",
    "read_json",
    "render_report",
    "write_csv",
    "write_html_report",
    "write_json",
    "write_markdown_report",
]
