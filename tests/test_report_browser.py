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
from test_hardening_report import POLICY, body_text_outside_styles, policy_before_styles
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


# --- fetch payloads: opening a page reaches no server; no output restyles or covers the page ------

OVERLAY_RGB = (0, 255, 0)  # the full-page overlay link's colour, looked for in screenshots
ERROR_RGB = (0xff, 0xeb, 0xe9)  # background of the failed badge and error box (style.css)
MIN_ERROR_PIXELS = 5000  # the failed study's error box alone is ~1000x30 px


def fetch_payloads(base: str) -> list[str]:
    """HTML and CSS that make a browser fetch ``base/<n>`` when the page opens, escaped and not.
    Each payload asks for its own path, so the server's log names the ones that got through."""
    payloads = [
        '<div style="background:url({u})">style url</div>',
        '<div style="background:u\\72l({u})">escaped url</div>',
        '<div style="background:\\000075rl({u})">six-digit escaped url</div>',
        '<div style="b\\61 ckground:u\\rl({u})">escaped property and url</div>',
        '<div style="background:url(&quot;{u}&quot;)">entity-quoted url</div>',
        "<div style=\"background-image:image-set('{u}' 1x)\">image-set</div>",
        "<div style=\"background-image:-webkit-image-set('{u}' 1x)\">-webkit-image-set</div>",
        '<div style="background-image:-webkit-image-set(url({u}) 1x)">-webkit-image-set url</div>',
        '<div style="border:30px solid;border-image:url({u}) 30">border-image</div>',
        '<div style="mask-image:url({u});-webkit-mask-image:url({u})">mask-image</div>',
        '<ul style="list-style-image:url({u})"><li>list-style-image</li></ul>',
        "<style>@import url({u});</style>",
        "<style>@\\69mport '{u}';</style>",
        "<style>@f\\6fnt-face{{font-family:f1;src:url({u})}} .ff{{font-family:f1}}</style><p class=ff>font</p>",
        "<style>@f\\6fnt-face{{font-family:f2;src:u\\72l({u})}} .f2{{font-family:f2}}</style><p class=f2>font</p>",
        "<style>@media all {{ .mq {{ background:url({u}) }} }}</style><p class=mq>media</p>",
        "<style>.sv {{ background:u\\72l({u}) }}</style><p class=sv>style block url</p>",
        "<style>.cv {{ --x: url({u}) }} .cv {{ background-image: var(--x) }}</style><p class=cv>custom property</p>",
        '<img src="{u}">',
        '<img srcset="{u} 1x">',
        '<picture><source srcset="{u}"><img alt="picture"></picture>',
        '<link rel="stylesheet" href="{u}">',
        '<link rel="prefetch" href="{u}">',
        '<table background="{u}"><tr><td>background attribute</td></tr></table>',
        '<video poster="{u}"></video>',
        '<audio src="{u}" autoplay></audio>',
        '<input type="image" src="{u}">',
        '<object data="{u}"></object>',
        '<embed src="{u}">',
        '<iframe src="{u}"></iframe>',
        '<script src="{u}"></script>',
        '<svg><image href="{u}"/></svg>',
        '<base href="{u}/"><img src="relative.png">',
        '<meta http-equiv="refresh" content="0;url={u}">',
    ]
    return [p.format(u=f"{base}/{n}") for n, p in enumerate(payloads)]


def overlay(base: str) -> str:
    """A run name that covers the whole page with a fake login link (the issue's case)."""
    return (f'<a href="{base}/login" style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:2147483647;'
            f'display:block;background:rgb{OVERLAY_RGB}">Session expired: log in</a>')


# restyles the page's own "failed" badge and error box (and a study page's failure banner)
HIDE_FAILURE = ("<style>.status-failed, .error, .vqalab-failed, .status { display: none !important; "
                "background: #dafbe1 !important }</style>")


class CountingServer:
    """An HTTP server on 127.0.0.1 (a free port) that records the path of every request."""

    def __init__(self):
        import http.server
        import threading

        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()

            do_POST = do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def fetch_project(root: Path, base: str) -> Path:
    """Two studies. ``fetch`` shows every payload the ways notebooks show data (a Styler table of run
    names, HTML outputs, a Markdown cell and a Markdown output), then fails on purpose; ``unclosed``
    lists a run named ``<style>`` and an unclosed ``<style>`` in MathML before a later output."""
    import nbformat
    from conftest import write_notebook

    payloads = fetch_payloads(base)
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    show = ("import pandas as pd\nfrom IPython.display import HTML, Markdown, display\n"
            "display(pd.DataFrame({'run': names, 'val_acc': [0.5] * len(names)}).style.format(precision=3))\n")
    path = root / "notebooks" / "fetch.ipynb"
    write_notebook(path, "Fetch payloads", "n: int = 1  # unused",
                   f"names = {payloads + [overlay(base), HIDE_FAILURE]!r}\n" + show
                   + "for name in names:\n    display(HTML(name))\ndisplay(Markdown('\\n\\n'.join(names)))",
                   "raise ValueError('planned failure')")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("\n\n".join([*payloads, f"![image]({base}/markdown-image)"])))
    nbformat.write(nb, path)
    write_notebook(root / "notebooks" / "unclosed.ipynb", "Unclosed elements", "n: int = 1  # unused",
                   "names = ['<style>', 'a run after it']\n" + show,
                   "display(HTML('<math><mtext><table><mglyph><style>'))",
                   "display(HTML('<p>after the unclosed style</p>'))")
    for name in ("fetch", "unclosed"):
        (root / "params" / f"{name}.yaml").write_text("presets:\n  quick: {n: 1}\n  cpu: {n: 1}\n  gpu: {n: 1}\n")
    return root


@pytest.fixture(scope="module")
def fetch_week(tmp_path_factory):
    """(week folder, the counting server) of a report built by the real builder from the payloads."""
    from test_report import WEEK

    from vqalab.report import run_report

    server = CountingServer()
    try:
        root = fetch_project(tmp_path_factory.mktemp("fetch") / "project", server.base)
        assert run_report(root=root, preset="quick", week=WEEK) == 1  # the study fails on purpose
        yield root / "reports" / WEEK, server
    finally:
        server.close()


@pytest.mark.slow
def test_opening_every_page_fetches_nothing(fetch_week, tmp_path):
    week_dir, server = fetch_week
    pages = sorted(p.name for p in week_dir.glob("*.html"))
    assert pages == ["fetch.html", "index.html", "report.html", "unclosed.html"]
    assert len(fetch_payloads(server.base)) == 34
    for page in pages:
        # the DOM after the load event and 3 s of page time, then a full paint of a tall window
        dom = chromium((week_dir / page).as_uri(), tmp_path / f"profile-{page}", "--dump-dom",
                       "--virtual-time-budget=3000")
        assert dom.returncode == 0 and "2026-W10" in dom.stdout, dom.stderr[-2000:]
        assert policy_before_styles(dom.stdout) == POLICY
        if page in ("fetch.html", "report.html"):  # the payloads are on the page, as tables and text
            assert "six-digit escaped url" in dom.stdout and "0.500" in dom.stdout
        screenshot(week_dir / page, tmp_path)
    assert server.paths == []


@pytest.fixture(scope="module")
def report_shot(fetch_week, tmp_path_factory):
    """Colour → pixel count of a screenshot of the payload report's report.html."""
    week_dir, _ = fetch_week
    shot = screenshot(week_dir / "report.html", tmp_path_factory.mktemp("shot"))
    return {rgb: count for count, rgb in shot.getcolors(maxcolors=1 << 24)}, shot.width * shot.height


@pytest.mark.slow
def test_no_output_covers_the_page(report_shot):
    colours, pixels = report_shot
    assert colours.get(OVERLAY_RGB, 0) < pixels * 0.05  # a line of the table, not the page


@pytest.mark.slow
def test_a_failed_study_still_reads_failed_whatever_its_outputs_style(fetch_week, report_shot, tmp_path):
    week_dir, _ = fetch_week
    colours, _ = report_shot
    assert colours.get(ERROR_RGB, 0) >= MIN_ERROR_PIXELS  # its badge and error box are painted
    dom = chromium((week_dir / "report.html").as_uri(), tmp_path / "profile", "--dump-dom").stdout
    assert 'class="status status-failed">failed</span>' in dom and "planned failure" in dom


@pytest.mark.slow
@pytest.mark.parametrize("page", ["unclosed.html", "report.html"])
def test_a_run_named_style_and_an_unclosed_style_swallow_nothing_after_them(fetch_week, tmp_path, page):
    import json

    week_dir, _ = fetch_week
    record = json.loads((week_dir / "summary.json").read_text())["studies"]["unclosed"]
    assert record["status"] == "ok" and record["error"] is None  # its page rendered
    # the DOM as the browser built it: the later output is page text, not the text of a <style>
    text = body_text_outside_styles(chromium((week_dir / page).as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert "a run after it" in text and "after the unclosed style" in text
