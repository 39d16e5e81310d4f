"""JupyterLab in headless Chromium, for the widget browser test and benchmarks/widget_latency.py.

    with lab_server(folder, cells) as lab, browser(folder) as page:
        open_and_run_all(page, lab)
        steps = slider_latency(page, slider, image, presses=20)

`lab_server` starts JupyterLab on a free loopback port (no token, every Jupyter directory a
temp folder, nothing fetched) with one notebook, explorer.ipynb, made of `cells`.
`slider_latency` measures, for each arrow-key press on a slider, the time from the key event to
the frame that paints the new picture, and where it went (`LATENCY_JS` timestamps the key event
(or a mouse press), the WebSocket send, the last message received before the picture changed, the
new picture in the page, its load event and the next painted frame).

The kernel is always this Python (`sys.executable`, with the repository and PYTHONPATH importable).
JupyterLab runs on it too, unless DIFFEDIT_LAB_PYTHON names another Python with its own JupyterLab:
`make test-colab-browser` runs the test with JupyterLab 3 and jupyterlab_widgets 1.1 in front of a
kernel with ipywidgets 7.7.1, the closest pair here to Colab's.

Needs the Debian `chromium` package (/usr/bin/chromium; DIFFEDIT_CHROMIUM names another binary)
and the `playwright`, `jupyterlab`, `ipykernel` and `nbformat` Python packages; no browser is
downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = os.environ.get("DIFFEDIT_CHROMIUM", "/usr/bin/chromium")  # the Debian package's browser
LAB_PYTHON = os.environ.get("DIFFEDIT_LAB_PYTHON") or sys.executable  # the Python that runs JupyterLab
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # one wait (server start, kernel start, first render)
ROOT = Path(__file__).resolve().parent.parent


class LabError(RuntimeError):
    "JupyterLab did not start or answer; the message ends with its log."


def missing_pieces() -> list[str]:
    "What the browser runs need and this machine lacks."
    missing = [f"the Python package {name} (pip install -r requirements.txt)"
               for name in ("playwright", "jupyterlab", "ipykernel", "nbformat") if importlib.util.find_spec(name) is None]
    if LAB_PYTHON != sys.executable and not os.access(LAB_PYTHON, os.X_OK):
        missing.append(f"the Python named by DIFFEDIT_LAB_PYTHON ({LAB_PYTHON})")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    return missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


def write_kernelspec(data_dir: Path) -> None:
    """The "python3" kernel in `data_dir` (first on JUPYTER_PATH: before the server's own): this Python, so that the
    kernel's packages (ipywidgets among them) are the test's, whichever JupyterLab serves it."""
    spec = data_dir / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))


def lab_version() -> str:
    "The version of the JupyterLab that `lab_server` runs."
    out = subprocess.run([LAB_PYTHON, "-c", "import jupyterlab; print(jupyterlab.__version__)"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def log_tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


@dataclass
class Lab:
    "A JupyterLab server: its base URL, its process and its log file."

    url: str
    proc: subprocess.Popen
    log: Path

    def wait_ready(self, timeout_s: float = TIMEOUT_MS / 1000) -> str:
        "Poll the status API until the server answers (no proxy: it is on loopback); return the URL."
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"JupyterLab exited with code {self.proc.returncode}:\n{log_tail(self.log)}")
            try:
                with opener.open(self.url + "api/status", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.25)
        raise LabError(f"JupyterLab did not answer at {self.url} in time:\n{log_tail(self.log)}")


def stop(proc: subprocess.Popen) -> None:
    "SIGTERM (the server shuts its kernels down), then SIGKILL its process group if it hangs."
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def lab_server(folder: Path, cells: list[str]):
    """JupyterLab on 127.0.0.1:<free port> serving `folder`/notebooks/explorer.ipynb (made of
    `cells`); its config, data and runtime dirs are folders in `folder` too. Yields a `Lab` as soon
    as the process starts, and always stops the server. The kernel runs on one thread with the
    repository importable."""
    dirs = {name: folder / name for name in ("notebooks", "runtime", "config", "data", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    write_notebook(dirs["notebooks"] / "explorer.ipynb", cells)
    write_kernelspec(dirs["data"])
    # no announcements feed, no update check, no extension index (nothing to fetch), no toast asking
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate", "extension_manager": "readonly"}}))
    notifications = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True, exist_ok=True)
    (notifications / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    cmd = [LAB_PYTHON, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.open_browser=False", "--IdentityProvider.token=",
           f"--ServerApp.root_dir={dirs['notebooks']}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # the kernel starts in the notebook's folder: PYTHONPATH's entries made absolute
    path = os.pathsep.join(os.path.abspath(p) for p in [str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_PATH=str(dirs["data"]), IPYTHONDIR=str(dirs["ipython"]), PYTHONPATH=path,
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = folder / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield Lab(f"http://127.0.0.1:{port}/", proc, log)
    finally:
        stop(proc)


# Timestamps (performance.now(), ms) of one slider step, filled in by the page; arm(box) starts one:
# it waits for the picture shown in `box` (its one visible <img>) to change, to another <img> (a
# deck of frames switched in the browser) or to a new src (a picture redrawn by the kernel).
LATENCY_JS = """
(() => {
  const L = window.__latency = {step: null, lastRecv: null};
  const NativeWebSocket = window.WebSocket;
  function TimedWebSocket(...args) {
    const ws = new NativeWebSocket(...args);
    ws.addEventListener('message', () => { L.lastRecv = performance.now(); });
    return ws;
  }
  TimedWebSocket.prototype = NativeWebSocket.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) TimedWebSocket[k] = NativeWebSocket[k];
  window.WebSocket = TimedWebSocket;
  const send = NativeWebSocket.prototype.send;
  NativeWebSocket.prototype.send = function (data) {
    if (L.step && L.step.key !== null && L.step.send === null) L.step.send = performance.now();
    return send.call(this, data);
  };
  for (const type of ['keydown', 'mousedown']) {
    document.addEventListener(type, (e) => {
      if (L.step && L.step.key === null) L.step.key = e.timeStamp;
    }, true);
  }
  L.visible = (box) => [...box.querySelectorAll('img')].find((i) => i.offsetParent !== null) || null;
  L.arm = (box) => {
    const before = L.visible(box), beforeSrc = before && before.src;
    const step = L.step = {key: null, send: null, recv: null, src: null, load: null, paint: null};
    const painted = () => {
      step.load = performance.now();
      // the first frame after this paints the picture; a message posted from its
      // animation-frame callback arrives after that frame is rendered
      requestAnimationFrame(() => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => { step.paint = performance.now(); };
        channel.port2.postMessage(0);
      });
    };
    const seen = new MutationObserver(() => {
      const img = L.visible(box);
      if (step.src !== null || !img || (img === before && img.src === beforeSrc)) return;
      step.src = performance.now();
      step.recv = L.lastRecv;
      seen.disconnect();
      if (img.complete && img.naturalWidth > 0) painted(); else img.addEventListener('load', painted, {once: true});
    });
    seen.observe(box, {attributes: true, childList: true, subtree: true});
  };
})();
"""


@dataclass
class Step:
    """One slider step in ms from the key event: the WebSocket send, the last message received
    before the picture changed (NaN when none came after the send: the browser switched by
    itself), the new picture in the DOM, loaded, painted."""

    send: float
    recv: float
    src: float
    load: float
    paint: float

    @classmethod
    def from_page(cls, t: dict) -> "Step":
        recv = t["recv"] if t["recv"] is not None and t["send"] is not None and t["recv"] > t["send"] else float("nan")
        send = t["send"] if t["send"] is not None else float("nan")
        return cls(send - t["key"], recv - t["key"], *(t[k] - t["key"] for k in ("src", "load", "paint")))


def slider_latency(page, handle, box, presses: int, key: str = "ArrowRight", pause_s: float = 0.05,
                   unchanged_after_s: float | None = None) -> list[Step]:
    """Press `key` on the slider `handle` `presses` times, one at a time, and time each press
    from its key event to the painted picture in `box` (Playwright locators). A press whose
    picture has not changed after `unchanged_after_s` seconds is left out (None: every press must
    change it, within TIMEOUT_MS). Needs LATENCY_JS installed in the page before it loaded."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    handle.focus()
    element = box.element_handle()
    steps = []
    wait_ms = TIMEOUT_MS if unchanged_after_s is None else 1000 * unchanged_after_s
    for _ in range(presses):
        page.evaluate("(box) => window.__latency.arm(box)", element)
        page.keyboard.press(key)
        try:
            page.wait_for_function("() => window.__latency.step.paint !== null", timeout=wait_ms)
        except PlaywrightTimeout:
            if unchanged_after_s is None:
                raise
            continue
        steps.append(Step.from_page(page.evaluate("() => window.__latency.step")))
        time.sleep(pause_s)
    return steps


def summary(steps: list[Step]) -> dict:
    "Median and quartiles (ms) of key -> painted, and the median of each part of the way."
    if not steps:
        raise ValueError("no step changed the picture: nothing to summarise")
    paint = sorted(s.paint for s in steps)
    q1, median, q3 = statistics.quantiles(paint, n=4, method="inclusive") if len(paint) > 1 else paint * 3
    waited = [s for s in steps if s.recv == s.recv]  # the steps whose picture came from the kernel

    def med(f, of=steps):
        return statistics.median(f(s) for s in of) if of else float("nan")

    return dict(n=len(steps), median=median, q1=q1, q3=q3, worst=paint[-1], to_new=med(lambda s: s.src),
                waited=len(waited), round_trip=med(lambda s: s.recv - s.send, waited),
                to_load=med(lambda s: s.load - s.src), to_paint=med(lambda s: s.paint - s.load))


def describe(name: str, s: dict) -> str:
    via = (f"{s['waited']} of them waited for the kernel (send -> its reply, median {s['round_trip']:.1f} ms)"
           if s["waited"] else "none waited for the kernel")
    return (f"{name}: key -> painted median {s['median']:.1f} ms (quartiles {s['q1']:.1f} to {s['q3']:.1f}, worst "
            f"{s['worst']:.1f}, {s['n']} steps); key -> new picture in the page {s['to_new']:.1f}, -> loaded "
            f"{s['to_load']:.1f} more, -> painted {s['to_paint']:.1f} more (medians); {via}")


@contextlib.contextmanager
def browser(folder: Path):
    "A headless Chromium page with LATENCY_JS installed; a screenshot lands in `folder` on failure."
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(folder / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = None
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(LATENCY_JS)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        except BaseException:  # pytest.fail raises a BaseException
            if page is not None:  # keep what the user would have seen, next to the server log
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(folder / "failure.png"), full_page=True)
            raise
        finally:
            context.close()


def open_and_run_all(page, lab: Lab) -> None:
    "Open explorer.ipynb, wait for an idle kernel, then Run > Run All Cells, as a user would."
    from playwright.sync_api import expect

    page.goto(lab.wait_ready() + "lab/tree/explorer.ipynb")
    # the status bar reads "Python 3 (ipykernel) | Idle" (run-all sent before that can be dropped)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\|\s*Idle"), timeout=TIMEOUT_MS)
    run_menu(page, "Run All Cells")


def run_menu(page, item: str, menu: str = "Run") -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-item", has_text=item).first.click()
