"""manifest.json + device runs -> terminal table, JSON, and a self-contained report.html.

    data.py    the report's data (what --json prints)
    terminal.py every terminal table (rich): the build summary, targets, device runs, the report
    plots.py   matplotlib figures as PNG bytes
    html.py    report.html with the figures embedded
"""

from edgekit.report.data import build_report
from edgekit.report.html import (
    write_html as _write,  # matplotlib only when a page is written
)


def write_html(build_dir, data):
    return _write(build_dir, data)


__all__ = ["build_report", "write_html"]
