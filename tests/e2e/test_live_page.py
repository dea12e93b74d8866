"""The live page in a real headless Chromium.

``reciprocity demo --scenario seed --serve`` runs a real worker (Tansu broker,
Faust, embedded ClickHouse) that serves the page; Chromium opens it with the
token in the URL fragment, and what the page shows (read from its DOM) must
equal what the store holds, computed here with our own SQL on the base
tables once the worker has stopped and released the store. A second test
feeds the page hostile org names from a stub server: they must show as text
and run nothing.

Screenshots go to ``artifacts/`` (git-ignored); with
``RECIPROCITY_UPDATE_SCREENSHOT=1`` the demo's one also replaces
``docs/images/live-page.png``.

Needs Debian's chromium and chromium-driver (``apt-get install -y
--no-install-recommends chromium chromium-driver fonts-dejavu-core``) and
selenium (the ``test`` extra). Without them the tests skip, except under CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import free_port
from pipeline.live import (
    LIST_LIMIT,
    render_page,
    shape_alerts,
    shape_event_rate,
    shape_heatmap,
    shape_omissions,
    shape_snubs,
)
from pipeline.sinks import open_backend

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
README_IMAGE = ROOT / "docs" / "images" / "live-page.png"
CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT = "apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core"
TOKEN = "page-token-7f3a"  # noqa: S105 - a test token on loopback
DAY = 86400

#: what the page shows, read from its DOM (data attributes hold exact values)
READ_DOM = """
const list = name => [...document.querySelectorAll("#" + name + "-table tbody tr")].map(tr =>
  Object.assign({id: tr.dataset.id}, Object.fromEntries([...tr.querySelectorAll("td")].map(td =>
    [td.dataset.field, td.dataset.value !== undefined ? td.dataset.value : td.textContent]))));
const value = id => document.getElementById(id).dataset.value;
return {
  orgs: [...document.querySelectorAll("#heatmap-table thead th")].slice(1)
    .map(th => th.textContent),
  cells: [...document.querySelectorAll("#heatmap-table td.cell")].map(td => ({
    a: td.dataset.a, b: td.dataset.b, r: td.dataset.r, given: td.dataset.given,
    returned: td.dataset.returned, text: td.textContent})),
  snubs: list("snubs"), omissions: list("omissions"), alerts: list("alerts"),
  rate: {current: value("rate-current"),
         totals: Object.fromEntries(["messages", "events", "late", "duplicates",
           "dead_lettered"].map(name => [name, value("rate-" + name)])),
         bars: [...document.querySelectorAll("#rate-chart rect")]
           .map(bar => [bar.dataset.minute, Number(bar.dataset.events)])},
  errors: [...document.querySelectorAll(".error")].map(e => e.textContent).filter(t => t),
  status: document.getElementById("status").textContent,
  refreshes: Number(document.getElementById("status").dataset.refreshes || 0),
};
"""


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    return f"needs {', '.join(missing)} ({APT})" if missing else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _browser_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = tmp_path_factory.mktemp("chromium-home")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1400,1300",
                f"--user-data-dir={home / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def severe_console_messages(driver: Any) -> list[str]:
    """Console errors: a script error, or a CSP violation (a wrong script hash)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE"]


def http_get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - http:// on loopback
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Demo:
    """``reciprocity demo --serve`` as a child process, its stdout collected."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.stderr = workdir / "stderr.log"
        env = {**os.environ, "HOME": str(workdir / "home"), "RECIPROCITY_WEB_TOKEN": TOKEN,
               "RECIPROCITY_LOG_LEVEL": "WARNING"}
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "demo", "--scenario", "seed",
                 "--rate", "5000", "--serve", "--port", str(port), "--dir", str(workdir)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout_s: float) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"demo exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.output()}")
            return next((line for line in self.lines if re.search(pattern, line)), None)

        return str(wait_for(found, timeout_s, f"{pattern!r} from the demo"))

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr.read_text()[-3000:]

    def stop(self) -> int:
        """Ctrl-C, as a user would; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return self.proc.returncode


def store_figures(store_dir: Path) -> dict[str, Any]:
    """The page's figures recomputed from the base tables, with our own SQL."""
    store = open_backend(f"chdb://{store_dir}")
    db = store.database
    engagements = "follows + likes + shares + replies + mentions + thanks"
    try:
        windows = store.query(
            f"SELECT src, dst, toUInt32(window_start), argMax(value, version), "
            f"argMax({engagements}, version) FROM {db}.pair_windows WHERE window = '1d' "
            "GROUP BY src, dst, window_start, stream, partition")
        snubs = store.query(f"SELECT DISTINCT id, src, dst, kind, ts, snub_ts FROM {db}.snubs")
        omissions = store.query(
            f"SELECT DISTINCT post_id, left_out, by_org, entities, ts FROM {db}.omissions")
        alerts = store.query(
            f"SELECT DISTINCT id, kind, org, other, ts, message FROM {db}.alerts")
        batches = store.query(
            "SELECT toUInt32(toStartOfMinute(t)), m, e, l, d, x FROM ("
            "SELECT argMax(time, last_offset) AS t, argMax(messages, last_offset) AS m, "
            "argMax(events, last_offset) AS e, argMax(late, last_offset) AS l, "
            "argMax(duplicates, last_offset) AS d, argMax(dead_lettered, last_offset) AS x "
            f"FROM {db}.pipeline_batches GROUP BY stream, partition, first_offset)")
    finally:
        store.close()
    newest = max(int(start) for _, _, start, _, _ in windows)
    directed: dict[tuple[str, str], list[float]] = {}
    for src, dst, start, value, count in windows:
        if newest - 30 * DAY < int(start) <= newest:
            sums = directed.setdefault((src, dst), [0.0, 0])
            sums[0] += float(value)
            sums[1] += int(count)
    cells = {}
    for (a, b) in {pair for pair in directed} | {(b, a) for a, b in directed}:
        given, e_ab = directed.get((a, b), [0.0, 0])
        returned, e_ba = directed.get((b, a), [0.0, 0])
        if e_ab + e_ba > 0:
            high = max(given, returned)
            cells[(a, b)] = (0.0 if high == 0 else min(given, returned) / high, given, returned)
    minutes: dict[int, int] = {}
    totals = dict.fromkeys(("messages", "events", "late", "duplicates", "dead_lettered"), 0)
    for minute, *counts in batches:
        minutes[int(minute)] = minutes.get(int(minute), 0) + int(counts[1])
        for name, count in zip(totals, counts, strict=True):
            totals[name] += int(count)
    return {
        "cells": cells,
        "orgs": sorted({org for pair in directed for org in pair}),
        "snubs": sorted(snubs, key=lambda s: (-s[5], s[1], s[2], s[0], s[3]))[:LIST_LIMIT],
        "omissions": sorted(omissions, key=lambda o: (-o[4], o[0], o[1]))[:LIST_LIMIT],
        "alerts": sorted(alerts, key=lambda a: (-a[4], a[1], a[2], a[0]))[:LIST_LIMIT],
        "minutes": minutes, "totals": totals,
    }


def reciprocity_lines(lines: list[str]) -> dict[str, tuple[float, float, str]]:
    """The demo report's 'reciprocity with each org' lines: other -> (given, returned, r)."""
    out = {}
    start = next(i for i, line in enumerate(lines) if "reciprocity with each org" in line)
    for line in lines[start + 1:]:
        match = re.match(r"\s+(\S+)\s+given\s+(\S+)\s+returned\s+(\S+)\s+r (\S+)", line)
        if not match:
            break
        out[match.group(1)] = (float(match.group(2)), float(match.group(3)), match.group(4))
    return out


def test_live_page_shows_what_the_store_holds(browser: Any, tmp_path: Path) -> None:
    port = free_port()
    demo = Demo(tmp_path, port)
    try:
        demo.wait_line(rf"^live page: http://127\.0\.0\.1:{port}/", 180)
        demo.wait_line(r"^serving the live page", 240)
        base = f"http://127.0.0.1:{port}/"

        # the data needs the token, the page shell does not
        assert http_get(base + "api/live")[0] == 401
        assert http_get(base + "api/live", token="wrong")[0] == 401  # noqa: S106
        status, _, body = http_get(base + "api/live", token=TOKEN)
        assert status == 200 and json.loads(body)["heatmap"]["pairs"]
        status, headers, body = http_get(base)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in headers["Content-Security-Policy"]

        browser.get(base + f"#token={TOKEN}")
        first = wait_for(lambda: browser.execute_script(READ_DOM)["refreshes"], 30,
                         "the first update")
        # it refreshes on its own
        wait_for(lambda: browser.execute_script(READ_DOM)["refreshes"] > first, 30,
                 "a second update")
        shown = browser.execute_script(READ_DOM)
        browser.execute_script("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "live-page.png"))
        if os.environ.get("RECIPROCITY_UPDATE_SCREENSHOT") == "1":
            README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ARTIFACTS / "live-page.png", README_IMAGE)
        assert severe_console_messages(browser) == []
        assert shown["status"].startswith("updated "), shown["status"]
        assert shown["errors"] == []
    finally:
        code = demo.stop()
    assert code == 0, demo.output()

    expected = store_figures(tmp_path / "store")

    # heatmap: one cell per ordered pair with engagement either way, r = min/max
    assert shown["orgs"] == expected["orgs"]
    cells = {(c["a"], c["b"]): c for c in shown["cells"]}
    assert set(cells) == set(expected["cells"])
    for pair, (r, given, returned) in expected["cells"].items():
        cell = cells[pair]
        assert float(cell["r"]) == pytest.approx(r, abs=1e-12), pair
        assert (float(cell["given"]), float(cell["returned"])) == (given, returned), pair
        assert cell["text"] == f"{r:.2f}", pair
    # ... and the demo's own report agrees for the faculty's pairs
    report = reciprocity_lines(demo.lines)
    assert len(report) >= 5
    for other, (given, returned, r_text) in report.items():
        cell = cells[("sci", other)]
        assert (float(cell["given"]), float(cell["returned"]), cell["text"]) == (
            given, returned, r_text)

    # lists: the newest records, once each
    assert len(expected["snubs"]) == len(shown["snubs"]) == LIST_LIMIT
    for row, (sid, src, dst, kind, ts, snub_ts) in zip(shown["snubs"], expected["snubs"],
                                                       strict=True):
        assert (row["id"], row["src"], row["dst"], row["kind"].strip()) == (sid, src, dst, kind)
        assert epoch(row["ts"]) == pytest.approx(ts, abs=1e-6)
        assert epoch(row["snub_ts"]) == pytest.approx(snub_ts, abs=1e-6)
    assert len(shown["omissions"]) == LIST_LIMIT
    for row, (post, left_out, by, entities, ts) in zip(shown["omissions"],
                                                       expected["omissions"], strict=True):
        assert (row["id"], row["left_out"], row["by"], row["entities"]) == (
            post, left_out, by, ", ".join(entities))
        assert epoch(row["ts"]) == pytest.approx(ts, abs=1e-6)
    assert len(shown["alerts"]) == LIST_LIMIT
    for row, (aid, kind, _, _, ts, message) in zip(shown["alerts"], expected["alerts"],
                                                   strict=True):
        assert (row["id"], row["kind"].strip(), row["message"]) == (aid, kind, message)
        assert epoch(row["ts"]) == pytest.approx(ts, abs=1e-6)

    # event rate: totals and per-minute bars of processing time
    lines = (tmp_path / "events.jsonl").read_bytes().count(b"\n")
    assert expected["totals"]["messages"] == lines
    assert {k: int(v) for k, v in shown["rate"]["totals"].items()} == expected["totals"]
    bars = {int(epoch(minute)): events for minute, events in shown["rate"]["bars"] if events}
    assert bars == expected["minutes"]


EVIL = '<img src=x onerror="window.__pwned=1">'
EVIL2 = '"><script>window.__pwned=2</script>'
EVIL3 = "a&amp;b' onmouseover='window.__pwned=3"


def hostile_payload() -> dict[str, Any]:
    ts = 1773964800.0
    return {
        "generated_at": "2026-03-20T00:00:00Z", "errors": {},
        "heatmap": shape_heatmap([(EVIL, EVIL2, 3.0, 1), (EVIL2, EVIL, 1.0, 1),
                                  (EVIL3, EVIL, 2.0, 1)], "1d", DAY, int(ts)),
        "snubs": shape_snubs([("s<1>", EVIL, EVIL2, "like", ts, ts + 3 * DAY)]),
        "omissions": shape_omissions([("p<1>", EVIL, EVIL3, [EVIL2, "x"], ts)]),
        "alerts": shape_alerts([("a1", "snub", EVIL, EVIL2, ts, f"{EVIL2} did not return "
                                 f"{EVIL}'s like")]),
        "event_rate": shape_event_rate([], time.time()),
    }


@contextlib.contextmanager
def stub_server(payload: dict[str, Any], token: str) -> Iterator[str]:
    """The page and a fixed /api/live answer (401 without the token)."""
    html, page_headers = render_page(refresh_s=1)
    body = json.dumps(payload).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name for GET
            if self.path == "/":
                self._send(200, html.encode(), "text/html; charset=utf-8", page_headers)
            elif self.path == "/api/live":
                if self.headers.get("Authorization") == f"Bearer {token}":
                    self._send(200, body, "application/json", {})
                else:
                    self._send(401, b'{"error": "unauthorized"}', "application/json", {})
            else:
                self._send(404, b"", "text/plain", {})

        def _send(self, status: int, data: bytes, kind: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_org_names_show_as_text_and_run_nothing(browser: Any) -> None:
    payload = hostile_payload()
    with stub_server(payload, "t0k") as base:
        browser.get(base)  # no token: the page says how to pass it
        wait_for(lambda: "unauthorized" in browser.execute_script(READ_DOM)["status"], 15,
                 "the unauthorized message")
        # reading the log empties it: only the refused requests were errors so far
        assert all("401" in m for m in severe_console_messages(browser))
        browser.get(base + "#token=t0k")
        browser.refresh()  # a fragment change alone does not reload the page
        wait_for(lambda: browser.execute_script(READ_DOM)["refreshes"], 15, "an update")
        shown = browser.execute_script(READ_DOM)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "live-page-hostile.png"))
        assert browser.execute_script("return window.__pwned") is None
        assert browser.execute_script("return document.images.length") == 0
        assert browser.execute_script("return document.scripts.length") == 1
        assert severe_console_messages(browser) == []
    assert shown["orgs"] == payload["heatmap"]["orgs"] == sorted([EVIL, EVIL2, EVIL3])
    assert {(c["a"], c["b"]) for c in shown["cells"]} == {
        (EVIL, EVIL2), (EVIL2, EVIL), (EVIL, EVIL3), (EVIL3, EVIL)}
    [snub] = shown["snubs"]
    assert (snub["id"], snub["src"], snub["dst"]) == ("s<1>", EVIL, EVIL2)
    [omission] = shown["omissions"]
    assert (omission["by"], omission["entities"]) == (EVIL3, f"{EVIL2}, x")
    [alert] = shown["alerts"]
    assert alert["message"] == f"{EVIL2} did not return {EVIL}'s like"
