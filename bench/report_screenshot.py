"""Render a run's report.html in headless Chromium to a PNG, for a human to look at.

    .venv/bin/python bench/report_screenshot.py runs/minilm-sentiment/report/report.html [--out report.png]

Needs Debian's ``chromium`` (``apt-get install chromium``). Prints the PNG's path and size; the page
is rendered 1200 px wide and tall enough for its table rows and plots (counted in a first headless
render's DOM), so nothing is cut off.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1200


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium on PATH; install Debian's chromium package (apt-get install chromium)")


def page_height(browser: str, url: str) -> int:
    """A window height that holds the whole page: its table rows and plots, counted in the DOM."""
    with tempfile.TemporaryDirectory() as profile:
        dump = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               f"--window-size={WIDTH},1000", "--run-all-compositor-stages-before-draw",
                               "--virtual-time-budget=2000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
    # the report's layout: at most about 24 px per table row and 420 px per plot, plus headings
    rows = len(re.findall(r"<tr", dump.stdout))
    plots = len(re.findall(r"<svg", dump.stdout))
    return max(1000, 600 + 24 * rows + 420 * plots)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="a report.html")
    parser.add_argument("--out", type=Path, help="PNG to write (default: beside the HTML)")
    args = parser.parse_args()
    if not args.html.is_file():
        sys.exit(f"{args.html} does not exist; run 'edgeslim run' first")
    out = (args.out or args.html.with_suffix(".png")).resolve()
    browser, url = chromium(), args.html.resolve().as_uri()
    height = page_height(browser, url)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", f"--screenshot={out}", url],
                       capture_output=True, text=True, timeout=180, check=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {WIDTH}x{height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
