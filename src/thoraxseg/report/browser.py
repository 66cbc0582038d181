"""Headless Chromium helpers: screenshot a report and check that it renders cleanly.

Uses the Debian ``chromium`` binary (``apt-get install chromium``; ``make test``
installs it) with ``--headless --no-sandbox --disable-gpu`` and a throw-away
profile, no network services. :func:`inspect_page` loads a *copy* of the page
with a small probe script injected at the top of ``<head>`` (the report itself
has no script): it records ``window`` error events (script errors and resources
that fail to load) and ``console.error`` calls, and after ``load`` writes the
number of images and those that did not decode (``naturalWidth == 0``) into the
DOM, which ``--dump-dom`` returns. The copy sits alone in an empty folder, so a
page that is not self-contained (relative file references) shows broken images.
Console messages Chromium logs on stderr
(``--enable-logging=stderr``) are collected too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from thoraxseg.errors import ThoraxsegError

_PROBE_ID = "__thoraxseg_probe"
_PROBE = """<script>
window.__tsErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target, what = e.message || ('failed to load ' + ((t && (t.src || t.href)) || '?').slice(0, 80));
  window.__tsErrors.push(String(what));
}, true);
(function () { var ce = console.error; console.error = function () {
  window.__tsErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var sizes = imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; });
  var pre = document.createElement('pre'); pre.id = '__PROBE_ID__';
  pre.textContent = JSON.stringify({n_images: imgs.length, broken: broken, sizes: sizes, errors: window.__tsErrors,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>""".replace("__PROBE_ID__", _PROBE_ID)


@dataclass
class PageCheck:
    """What :func:`inspect_page` found.

    Attributes
    ----------
    n_images
        ``<img>`` elements on the page.
    broken
        Alt texts of images that did not decode (``naturalWidth == 0``).
    sizes
        Natural (width, height) in pixels of every image.
    errors
        Script errors, failed resource loads and ``console.error`` calls seen by the probe.
    console
        Console messages Chromium logged on stderr.
    height
        Page height in CSS pixels.
    """

    n_images: int
    broken: list[str]
    sizes: list[tuple[int, int]]
    errors: list[str]
    console: list[str] = field(default_factory=list)
    height: int = 0

    @property
    def ok(self) -> bool:
        """True when every image rendered and nothing was logged."""
        return not self.broken and not self.errors and not self.console


def find_chromium() -> str | None:
    """Path of the Chromium binary (``$THORAXSEG_CHROMIUM``, ``chromium``, ``chromium-browser``), or None."""
    env = os.environ.get("THORAXSEG_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}"]


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise ThoraxsegError("chromium not found (apt-get install chromium, or set THORAXSEG_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="thoraxseg-chromium-") as profile:
        return subprocess.run([exe, *_flags(Path(profile)), *args], capture_output=True, text=True,
                              timeout=timeout_s, check=False)


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 900, timeout_s: float = 90.0
               ) -> Path:
    """Screenshot the top ``width × height`` CSS pixels of a local HTML file to ``png``."""
    src = Path(html).resolve()
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    res = _run([f"--window-size={width},{height}", f"--screenshot={tmp}", src.as_uri()], timeout_s)
    if res.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ThoraxsegError(f"{src}: chromium screenshot failed (exit {res.returncode}): {res.stderr[-300:]}")
    os.replace(tmp, out)
    return out


_CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE[^\]]*\]\s*(.*)")


def inspect_page(html: str | Path, timeout_s: float = 90.0, budget_ms: int = 15000) -> PageCheck:
    """Load a local HTML file in headless Chromium and report images and errors (see module docstring)."""
    src = Path(html).resolve()
    text = src.read_text(encoding="utf-8")
    probed = re.sub(r"<head(\s[^>]*)?>", lambda m: m.group(0) + _PROBE, text, count=1, flags=re.IGNORECASE)
    if probed == text:
        probed = _PROBE + text
    with tempfile.TemporaryDirectory(prefix="thoraxseg-page-") as tmpdir:
        # An empty folder: a page that relies on files next to it (not self-contained) shows broken images.
        copy = Path(tmpdir) / src.name
        copy.write_text(probed, encoding="utf-8")
        res = _run(["--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom",
                    copy.as_uri()], timeout_s)
    m = re.search(rf'<pre id="{_PROBE_ID}">(.*?)</pre>', res.stdout, flags=re.DOTALL)
    if m is None:
        raise ThoraxsegError(f"{src}: the page did not finish loading in chromium (exit {res.returncode}): "
                             f"{res.stderr[-300:]}")
    data = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))
    console = [c.group(1).strip() for c in map(_CONSOLE.search, res.stderr.splitlines()) if c]
    return PageCheck(n_images=int(data["n_images"]), broken=list(data["broken"]),
                     sizes=[(int(w), int(h)) for w, h in data["sizes"]], errors=list(data["errors"]),
                     console=console, height=int(data.get("height", 0)))
