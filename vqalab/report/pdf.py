"""``report.pdf``: the week's ``report.html`` printed by Debian's headless Chromium (A4, code hidden).

The page layout for print (A4, a page break before each study, figures and tables kept whole)
is the report's own print CSS in ``report_templates/style.css``; Chromium only prints it. No
browser is downloaded: where ``chromium`` is not installed the PDF is skipped with a reason.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from vqalab.io import write_atomically

log = logging.getLogger(__name__)

PDF_FILE = "report.pdf"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-pdf-header-footer"]
PRINT_TIMEOUT_S = 300


def find_chromium() -> str | None:
    """Debian's ``chromium`` on PATH (or /usr/bin/chromium), else None."""
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def write_pdf(week_dir: Path, report_file: str = "report.html") -> dict:
    """Print ``week_dir/report_file`` to ``week_dir/report.pdf``.

    Chromium prints into a private temporary folder; the finished PDF then replaces
    ``report.pdf`` by a rename (a symbolic link there is replaced, never followed).
    Returns the record kept in ``summary.json``: ``{"file": "report.pdf"}`` when written, else
    ``{"file": None, "skipped": reason}`` (no Chromium, or Chromium failed).
    """
    chromium = find_chromium()
    if chromium is None:
        reason = "Debian's chromium is not installed (apt-get install -y chromium)"
        log.warning("%s not written: %s", PDF_FILE, reason)
        return {"file": None, "skipped": reason}
    page = (Path(week_dir) / report_file).resolve()
    with tempfile.TemporaryDirectory(prefix="vqalab-pdf-") as tmp:
        printed = Path(tmp) / PDF_FILE
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--print-to-pdf={printed}", page.as_uri()]
        try:
            result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=PRINT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result = None
        if result is None or not printed.is_file() or printed.stat().st_size == 0:
            why = (f"chromium did not finish within {PRINT_TIMEOUT_S} s" if result is None
                   else f"chromium exited {result.returncode}: {result.stderr.strip()[-300:]}")
            log.warning("%s not written: %s", PDF_FILE, why)
            return {"file": None, "skipped": why}
        data = printed.read_bytes()
    write_atomically(Path(week_dir) / PDF_FILE, lambda f: f.write(data))
    log.info("report PDF: %s", Path(week_dir) / PDF_FILE)
    return {"file": PDF_FILE}
