"""The report in a real browser: Debian's headless Chromium opens the pages from disk (no network).

Checks that index.html and report.html log nothing to the console and that the plots are
visible: every <img> is an embedded PNG that decodes, and a screenshot shows the tiny study's
magenta bar. Skips where Chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import PLOT_RGB, Tags, shared_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--enable-logging=stderr", "--v=0"]
WINDOW = (1200, 2400)  # tall enough to show the first study's plot in report.html
BROWSER_TIMEOUT_S = 120
# Chromium logs page console messages (any level) as ":CONSOLE" lines on stderr.
CONSOLE_LINE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")
MIN_PLOT_PIXELS = 2000  # the bar is ~150x150 px in the screenshot; stray pixels are far fewer

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile on ``url``."""
    args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for m in map(CONSOLE_LINE.search, stderr.splitlines()) if m]


def plot_pixels(image: Image.Image) -> int:
    """How many screenshot pixels have the plot's bar colour."""
    return sum(count for count, rgb in image.getcolors(maxcolors=1 << 24)
               if all(abs(a - b) <= 8 for a, b in zip(rgb, PLOT_RGB)))


@pytest.fixture(scope="module")
def week_dir(tmp_path_factory):
    shared = shared_report(tmp_path_factory)  # rendered once for both test files
    assert shared["code"] == 1  # the broken study fails on purpose
    return shared["dir"]


@pytest.fixture(scope="module")
def opened(week_dir, tmp_path_factory):
    """Page name → Chromium's run on it with --dump-dom (stdout: the DOM, stderr: the console)."""
    cache: dict[str, subprocess.CompletedProcess] = {}

    def open_page(page: str) -> subprocess.CompletedProcess:
        if page not in cache:
            cache[page] = chromium((week_dir / page).as_uri(), tmp_path_factory.mktemp("profile"), "--dump-dom")
        return cache[page]

    return open_page


def screenshot(page: Path, folder: Path) -> Image.Image:
    shot = folder / f"{page.stem}.png"
    result = chromium(page.as_uri(), folder / "profile", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                      f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    return Image.open(shot).convert("RGB")


def test_console_check_catches_errors(tmp_path):
    """The console check itself: a page with a failing script must be caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    result = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("undefinedFunction" in m for m in console_messages(result.stderr)), result.stderr[-2000:]


@pytest.mark.parametrize("page", ["index.html", "report.html", "plot.html", "broken.html"])
def test_pages_open_without_console_errors(opened, page):
    result = opened(page)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2026-W10" in result.stdout  # the page was rendered
    assert console_messages(result.stderr) == []


@pytest.mark.parametrize("page", ["report.html", "plot.html"])
def test_plots_are_visible(week_dir, opened, tmp_path, page):
    # the DOM as the browser built it: every image is an embedded PNG that decodes
    parser = Tags()
    parser.feed(opened(page).stdout)
    sources = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert len(sources) == 1
    assert sources[0].startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1])))
    assert image.width > 100 and image.height > 100

    # and the browser paints it: the bar's colour fills a visible area of the screenshot
    shot = screenshot(week_dir / page, tmp_path)
    assert len(shot.getcolors(maxcolors=1 << 24)) > 10  # not blank
    assert plot_pixels(shot) >= MIN_PLOT_PIXELS


def test_index_screenshot_is_not_blank(week_dir, tmp_path):
    shot = screenshot(week_dir / "index.html", tmp_path)
    # more than a white page: text and the environment card's background
    white = sum(c for c, rgb in shot.getcolors(maxcolors=1 << 24) if rgb == (255, 255, 255))
    assert white < shot.width * shot.height * 0.97
    assert plot_pixels(shot) == 0  # the index has no plots: the colour test is specific


# --- hostile run names: no script effect when the pages open -------------------------------------

def hostile_project(root: Path) -> Path:
    """A study showing hostile run names as vqa_models shows run names: in a pandas Styler table."""
    from conftest import write_notebook
    from test_hardening import XSS_PAYLOADS

    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    write_notebook(root / "notebooks" / "names.ipynb", "Run names", "n: int = 1  # rows shown",
                   "import pandas as pd\nfrom IPython.display import HTML, display\n"
                   f"names = {XSS_PAYLOADS!r}\n"
                   "display(pd.DataFrame({'run': names, 'val_acc': [0.5] * len(names)}).style.format(precision=3))\n"
                   "display(HTML(''.join(names)))")
    (root / "params" / "names.yaml").write_text("presets:\n  quick: {n: 1}\n  cpu: {n: 1}\n  gpu: {n: 1}\n")
    return root


@pytest.fixture(scope="module")
def hostile_week(tmp_path_factory):
    from test_report import WEEK

    from vqalab.report import run_report

    root = hostile_project(tmp_path_factory.mktemp("hostile") / "project")
    assert run_report(root=root, preset="quick", week=WEEK) == 0
    return root / "reports" / WEEK


@pytest.mark.parametrize("page", ["names.html", "report.html"])
def test_hostile_run_names_have_no_script_effect_in_the_browser(hostile_week, tmp_path, page):
    result = chromium((hostile_week / page).as_uri(), tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    # every payload sets document.title to "pwned-N" when its script runs
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.DOTALL).group(1)
    assert "pwned" not in title and "2026-W10" in title
    parser = Tags()
    parser.feed(dom)
    assert "Run names" in dom and "0.500" in dom  # the table is there, with its figures
    for tag, attrs in parser.tags:
        assert tag not in {"script", "svg", "math", "animate", "use", "iframe", "noscript"}, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "src"):
            value = (attrs.get(name) or "").replace(" ", "").lower()
            assert not value.startswith("javascript:"), (tag, attrs)
            assert not value.startswith("data:") or value.startswith("data:image/png;base64,"), (tag, attrs)
    assert console_messages(result.stderr) == []
