"""Check the built site in headless Chromium: math rendered, nothing fetched from outside, screenshots.

    python docs/check_site.py                   # builds the site (mkdocs build --strict) into a temporary folder
    python docs/check_site.py --site site       # checks a site already built there
    python docs/check_site.py --shots DIR       # where the screenshots go (default docs/assets/screenshots)

It serves the site on 127.0.0.1 (a random free port), opens the front page, the PEFT guide, one API page and the
method page in headless Chromium (`apt-get install -y chromium`, or CHROMIUM=/path/to/chrome), and fails when:

- a page requests anything from a host other than 127.0.0.1 / localhost (Chromium's network log lists every
  request and what started it; hosts other than ours are also mapped to nowhere, so a page that needs a CDN shows
  it in the screenshot too);
- a page's math is not rendered: after MathJax ran, every ``arithmatex`` element of the page holds a rendered
  ``mjx-container`` and no raw ``\\(`` / ``\\[`` / ``$$`` is left in the DOM's text;
- a page does not load (HTTP status other than 200 from our server).

Each page's screenshot is written as a PNG (palette-reduced with Pillow when it is installed, to keep it small).
Exit status 0 when every check passed, 1 otherwise, 2 when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
# (site path, screenshot name, does the page hold math that must be rendered)
PAGES = [
    ("", "front.png", False),
    ("guides/peft/", "peft-guide.png", False),
    ("api/budget/", "api-budget.png", False),
    ("method/", "method.png", True),
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    # Any host but ours resolves to nowhere: a page that needs the network shows it instead of fetching.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--virtual-time-budget=15000",  # let MathJax typeset before the DOM is dumped or the screenshot taken
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class Server:
    """The site on 127.0.0.1, recording the status of every request it answers."""

    def __init__(self, site: Path):
        self.statuses: list[tuple[str, int]] = []
        statuses = self.statuses

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                statuses.append((self.path, int(code) if str(code).isdigit() else 0))

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(site))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def requests_of(netlog: Path) -> list[tuple[str, str | None]]:
    """Every request in Chromium's network log: (URL, the origin that started it). Requests the browser starts
    itself (the navigation, its own background traffic) have the initiator "not an origin"."""
    data = json.loads(netlog.read_text(errors="replace"))
    start_job = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in data["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "url" in params:
            urls.append((params["url"], params.get("initiator")))
    return urls


def chromium(binary: str, url: str, extra: list[str], workdir: Path) -> tuple[str, set[str]]:
    """Run headless Chromium on `url`; its stdout and the hosts of every request the page made."""
    run = Path(tempfile.mkdtemp(dir=workdir))  # a fresh profile each time: no cache hides a request
    netlog, profile = run / "netlog.json", run / "profile"
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", *extra, url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {url} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    requests = requests_of(netlog)
    shutil.rmtree(run, ignore_errors=True)
    if url not in {u for u, _ in requests}:
        raise RuntimeError(f"the network log of {url} does not show the page's own request: cannot check it")
    origin = url.split("/", 3)[:3]
    page_made = [u for u, initiator in requests if initiator == "/".join(origin)]
    return proc.stdout, {urlsplit(u).hostname or u for u in page_made}


def math_problems(dom: str) -> list[str]:
    """What is wrong with the math of a page's rendered DOM (empty when all of it is rendered)."""
    problems = []
    spans = len(re.findall(r'class="arithmatex"', dom))
    rendered = len(re.findall(r"<mjx-container", dom))
    if spans == 0:
        problems.append("no math on the page (no arithmatex element)")
    if rendered < spans:
        problems.append(f"{spans} math elements but only {rendered} rendered by MathJax (mjx-container)")
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    for raw in ("\\(", "\\[", "$$"):
        if raw in text:
            problems.append(f"raw {raw!r} left in the page's text: MathJax did not typeset it")
    return problems


def shrink_png(path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128)
    small.save(path, optimize=True)


def build(site: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def check(site: Path, shots: Path, binary: str) -> list[str]:
    failures: list[str] = []
    server = Server(site)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for path, shot, has_math in PAGES:
                url = server.url + path
                dom, hosts_dom = chromium(binary, url, ["--dump-dom"], work)
                _, hosts_shot = chromium(binary, url, [f"--screenshot={shots / shot}", "--window-size=1280,1500"], work)
                shrink_png(shots / shot)
                outside = sorted((hosts_dom | hosts_shot) - LOCAL_HOSTS)
                if outside:
                    failures.append(f"{path or 'front page'}: requests to hosts other than ours: {outside}")
                if has_math:
                    failures += [f"{path}: {p}" for p in math_problems(dom)]
                print(f"{path or 'front page'}: {len(dom):,} bytes of DOM, screenshot {shots / shot}")
    finally:
        server.close()
    bad = sorted({(p, s) for p, s in server.statuses if s not in (200, 304)})
    failures += [f"{p}: HTTP {s} from the site" for p, s in bad]
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site to check (default: build one now)")
    parser.add_argument("--shots", type=Path, default=ROOT / "docs" / "assets" / "screenshots")
    args = parser.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("check_site: no Chromium found (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build(site)
        failures = check(site.resolve(), args.shots.resolve(), binary)
    for failure in failures:
        print(f"check_site: FAILED: {failure}")
    if not failures:
        print(json.dumps({"pages": [p or "/" for p, _, _ in PAGES], "math": "rendered", "outside_requests": 0}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
