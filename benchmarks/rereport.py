"""Rebuild the targets, the Markdown summary and the plots of a finished run from its
JSON: `.venv/bin/python -m benchmarks.rereport benchmarks/results/<timestamp>.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import report, report_plots


def main(path: Path) -> None:
    results = json.loads(path.read_text())
    results["targets"] = report.targets(results)
    path.write_text(json.dumps(results, indent=2, default=str))
    stem = path.with_suffix("")
    plots = report_plots.plots(results, stem)
    md = stem.with_suffix(".md")
    md.write_text(report.markdown(results, plots, md.parent))
    print(md)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
