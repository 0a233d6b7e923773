"""Benchmark replaying a ~100 MB terminal recording in Chromium: time to first frame, bytes fetched.

Run from the repository root with the project's Python:

    .venv/bin/python bench/replay_bench.py [--mb 100] [--no-results]

It never touches the site's own database or recordings. It makes, and removes at the end:

- a throwaway database (SQLite: var/bench/replay_bench.sqlite3; PostgreSQL when DATABASE_URL
  names one: "<name>_replay_bench"), migrated, with an auditor (TOTP device; the browser gets a
  session signed in with both factors) and one ended session;
- an asciicast v2 recording of ~``--mb`` MB under var/bench/replay-recordings/ (a long
  shell session: prompts, typed commands with their markers, logs and listings), its row
  marked sealed (sha256 computed; no Vault signature: nothing here verifies one);
- the web app as in production, ``daphne pamsite.asgi:application`` on a free port.

Measured in headless Chromium (Debian's, through Playwright), each from navigation start to
the player's screen showing the recording's first output (``performance.now()`` when the text
appears), with the bytes the page fetched before that moment (Resource Timing, bodies) and
the page's JS heap then. Both pages are loaded once first (a small recording), so the
player's script and WebAssembly are compiled and cached for both origins alike.

1. the replay page (``replay:session``, the player reading the segmented index), cold: the
   index is built on this request;
2. the same again, warm: the index is read from its cache beside the recording;
3. a seek to the last marker (a command near the end): time until the screen shows it;
4. the baseline: the same player given the whole file as one URL (the player's default
   source), served by a plain static file server (no Django in the way: its best case);
5. 2 and 4 again with Chromium's network throttled to 100 Mbit/s (5 ms latency), a hospital
   LAN rather than loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shared import (  # bench/shared.py
    ROOT,
    add_output_arguments,
    add_quick_argument,
    create_throwaway_database,
    setup_django,
    write_results,
)

SECTION = "## Replay (bench/replay_bench.py)"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
FIRST_TEXT = "BENCH-FIRST-FRAME"
LAST_COMMAND = "tail -n 50 /var/log/pacs/last-command.log"
LAST_OUTPUT = "BENCH-LAST-COMMAND-OUTPUT"
REPEAT = 5  # page loads per figure; the median is reported (the machine is shared: noisy)
REPEAT_THROTTLED = 3  # the throttled figures are mostly transfer time: steadier, and slow


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="recording size in MB (default 100)")
    add_quick_argument(parser, "a 5 MB recording (a check that it runs)", mb=5)
    add_output_arguments(parser, keep="keep the database and recording afterwards")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recording(path: Path, megabytes: int) -> dict:
    """A long shell session as asciicast v2, written the way TerminalRecorder writes it."""
    import orjson

    prompt = "\x1b[01;32malice@pacs01\x1b[00m:\x1b[01;34m/var/lib/dicom\x1b[00m$ "
    log_line = (
        "2026-11-27T10:{m:02d}:{s:02d}.{us:06d} INFO  [dcm4chee.archive] C-STORE-RQ from MODALITY{n} "
        "SOP 1.2.840.113619.2.55.3.{n}.{m}{s} stored to /var/lib/dicom/{n:08d}.dcm ({size} bytes)\r\n"
    )
    target = megabytes * 1_000_000
    path.parent.mkdir(parents=True, exist_ok=True)
    t, n, markers, events = 0.0, 0, 0, 0
    with path.open("wb") as f:
        header = {"version": 2, "width": 160, "height": 48, "timestamp": int(time.time()), "title": "bench"}
        f.write(json.dumps(header).encode() + b"\n")
        f.write(orjson.dumps([0.0, "o", f"{FIRST_TEXT}: Welcome to pacs01\r\n" + prompt]) + b"\n")
        size = f.tell()
        last = False
        while not last:
            last = size >= target
            command = (
                LAST_COMMAND if last else f"grep MODALITY{n % 17} /var/log/pacs/archive.log | tail -n 400"
            )
            for char in command:  # the echo of each key the user types
                t += 0.09
                f.write(orjson.dumps([round(t, 6), "o", char]) + b"\n")
            t += 0.4
            f.write(orjson.dumps([round(t, 6), "m", f"alice@pacs01:/var/lib/dicom$ {command}"[:80]]) + b"\n")
            markers += 1
            lines = [
                log_line.format(
                    m=(n + i) % 60, s=i % 60, us=(n * 7919 + i) % 1_000_000, n=n + i, size=500_000 + i
                )
                for i in range(400)
            ]
            if last:
                lines.append(LAST_OUTPUT + "\r\n")
            for chunk in range(0, len(lines), 20):  # output arrives in reads of a few KiB
                t += 0.011
                f.write(orjson.dumps([round(t, 6), "o", "".join(lines[chunk : chunk + 20])]) + b"\n")
            t += 0.05
            f.write(orjson.dumps([round(t, 6), "o", prompt]) + b"\n")
            t += 3.0
            events += len(command) + 22
            n += 1
            size = f.tell()
    return {"size": path.stat().st_size, "duration": t, "markers": markers, "events": events}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def make_fixtures(cast_path: Path, recordings: Path, small_path: Path):
    """An auditor with a signed-in web session; ended sessions recorded in the big and small files."""
    from django.contrib.auth.models import Group
    from django.test import Client
    from django.utils import timezone
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from identity.models import User
    from recordings.models import GatewaySession, Recording

    auditor = User.objects.create_user(username="bench-auditor", password=os.urandom(16).hex())
    auditor.groups.add(Group.objects.get_or_create(name="auditor")[0])
    device = TOTPDevice.objects.create(user=auditor, name="bench", confirmed=True)
    owner = User.objects.create_user(username="bench-alice", password=os.urandom(16).hex())
    sessions = []
    for path in (cast_path, small_path):
        session = GatewaySession.objects.create(
            user=owner,
            account="pacs01-root",
            client_address="192.0.2.10",
            gateway_node="bench",
            ended_at=timezone.now(),
        )
        Recording.objects.create(
            session=session,
            channel=0,
            kind=Recording.Kind.TERMINAL,
            path=path.relative_to(recordings).as_posix(),
            size=path.stat().st_size,
            sha256=sha256_of(path),
            finalized_at=timezone.now(),
        )
        sessions.append(session)
    client = Client()
    client.force_login(auditor)
    web_session = client.session
    web_session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    web_session.save()
    return sessions[0], sessions[1], web_session.session_key


def start_daphne(port: int, env: dict) -> subprocess.Popen:
    daphne = Path(sys.executable).parent / "daphne"
    process = subprocess.Popen(
        [str(daphne), "-b", "127.0.0.1", "-p", str(port), "pamsite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(
                    "daphne did not start: " + process.stderr.read().decode()[-2000:]
                ) from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("daphne did not listen within 30 s")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def start_static_server(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# Installed in every page before its scripts: notes when each awaited text first appears on the
# player's screen (a MutationObserver, so no polling delay; textContent, so no forced layout).
SCREEN_WATCH = """(() => {
  window.__seen = {};
  const wanted = %s;
  new MutationObserver(() => {
    const screen = document.querySelector(".ap-term");
    if (!screen) return;
    const text = screen.textContent;
    for (const w of wanted) {
      if (!(w in window.__seen) && text.includes(w)) window.__seen[w] = performance.now();
    }
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();"""

SEEN = "text => (window.__seen && window.__seen[text]) || false"

BYTES_BEFORE = """([until, pattern]) => performance.getEntriesByType("resource")
  .filter(e => e.responseEnd <= until + 1 && (!pattern || e.name.includes(pattern)))
  .reduce((sum, e) => sum + (e.encodedBodySize || e.transferSize || 0), 0)"""


def first_frame(page, url: str, *, pattern: str) -> tuple[float, int, int, float]:
    """(ms from navigation start to the first output on screen, recording bytes fetched, all
    bytes fetched, JS heap in MB then)."""
    page.goto(url, wait_until="commit")
    at = page.wait_for_function(SEEN, arg=FIRST_TEXT, timeout=120_000).json_value()
    heap = page.evaluate("() => (performance.memory ? performance.memory.usedJSHeapSize : 0) / 1e6")
    # The document itself is not a resource entry; add its body size.
    document = page.evaluate("() => performance.getEntriesByType('navigation')[0].encodedBodySize || 0")
    recording_bytes = page.evaluate(BYTES_BEFORE, [at, pattern])
    all_bytes = page.evaluate(BYTES_BEFORE, [at, ""]) + document
    return at, recording_bytes, all_bytes, heap


def throttle(context, page, megabits: float | None) -> None:
    """Chromium's network at ``megabits`` Mbit/s each way with 5 ms latency (None: unthrottled)."""
    cdp = context.new_cdp_session(page)
    rate = megabits * 1e6 / 8 if megabits else -1
    conditions = {"offline": False, "latency": 5 if megabits else 0}
    cdp.send(
        "Network.emulateNetworkConditions",
        {**conditions, "downloadThroughput": rate, "uploadThroughput": rate},
    )


def machine() -> str:
    uname = subprocess.run(["uname", "-srvmo"], capture_output=True, text=True).stdout.strip()
    return f"`{uname}`, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def chromium_version(executable: str) -> str:
    return subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    args = parse_args()
    bench_dir = ROOT / "var" / "bench"
    recordings = bench_dir / "replay-recordings"
    shutil.rmtree(recordings, ignore_errors=True)
    setup_django(RECORDINGS_ROOT=str(recordings))
    from django.conf import settings
    from django.db import connection

    from recordings import replay

    executable = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None)
    if executable is None:
        print("Chromium is not installed: `make bench` installs it (apt package chromium).")
        return 1

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    cast_path = recordings / "2026/11/27/session-1/channel-0.cast"
    print(f"writing a ~{args.mb} MB recording…", flush=True)
    made = time.monotonic()
    shape = write_recording(cast_path, args.mb)
    made = time.monotonic() - made
    print(
        f"  {shape['size']:,} bytes, {shape['duration'] / 3600:.1f} h, "
        f"{shape['markers']:,} markers ({made:.1f} s)"
    )

    small_path = recordings / "2026/11/27/session-2/channel-0.cast"
    small_path.parent.mkdir(parents=True)
    with cast_path.open("rb") as f:
        head = f.read(1_000_000)
    small_path.write_bytes(head[: head.rfind(b"\n") + 1])

    db_name, destroy = create_throwaway_database("replay_bench", keep=args.keep)
    static_dir = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    daphne = server = None
    try:
        session, small_session, session_key = make_fixtures(cast_path, recordings, small_path)
        index_build = time.monotonic()
        built = replay.build_cast_index(cast_path)
        index_build = time.monotonic() - index_build

        env = {
            **os.environ,
            "DATABASE_URL": (
                f"sqlite:///{db_name}"
                if connection.vendor == "sqlite"
                else os.environ.get("DATABASE_URL", "").rsplit("/", 1)[0] + "/" + db_name
            ),
            "RECORDINGS_ROOT": str(recordings),
            "DEBUG": "false",
        }
        port = free_port()
        daphne = start_daphne(port, env)
        base = f"http://127.0.0.1:{port}"

        # The baseline page: the same vendored player, given the whole file.
        vendor = ROOT / "static" / "vendor" / "asciinema-player"
        for name in ("asciinema-player.min.js", "asciinema-player.css"):
            shutil.copy(vendor / name, static_dir / name)
        os.symlink(cast_path, static_dir / "whole.cast")
        os.symlink(small_path, static_dir / "small.cast")
        for page_name, cast_name in (("index.html", "whole.cast"), ("small.html", "small.cast")):
            (static_dir / page_name).write_text(
                "<!doctype html><link rel=stylesheet href=asciinema-player.css><div id=p></div>"
                "<script src=asciinema-player.min.js></script>"
                f"<script>AsciinemaPlayer.create('{cast_name}', document.getElementById('p'),"
                " {autoPlay: true, preload: true, fit: 'width'});</script>"
            )
        server, static_port = start_static_server(static_dir)

        from playwright.sync_api import sync_playwright

        rows = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--enable-precise-memory-info",
                ],
            )
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session_key, "url": base}])
            context.add_init_script(SCREEN_WATCH % json.dumps([FIRST_TEXT, LAST_COMMAND[:40]]))
            static = f"http://127.0.0.1:{static_port}"
            static = f"http://127.0.0.1:{static_port}"
            url = f"{base}/replay/sessions/{session.pk}/?autoplay=1"
            cache = cast_path.with_name(cast_path.name + replay.INDEX_SUFFIX)

            def measure(target: str, pattern: str, *, megabits: float | None = None, cold: bool = False):
                """Median of a few first frames, each in a fresh tab (a clean JS heap)."""
                runs = []
                for _ in range(REPEAT_THROTTLED if megabits else REPEAT):
                    if cold:
                        cache.unlink(missing_ok=True)
                    tab = context.new_page()
                    if megabits:
                        throttle(context, tab, megabits)
                    runs.append(first_frame(tab, target, pattern=pattern))
                    tab.close()
                runs.sort()
                return runs[len(runs) // 2]

            # Warm-up: both origins' copies of the player compiled and cached, daphne's first request done.
            measure(f"{base}/replay/sessions/{small_session.pk}/?autoplay=1", "/replay/")
            measure(f"{static}/small.html", "small.cast")

            plan = [
                (
                    "Replay page, segmented (cold: index built on each request)",
                    url,
                    "/replay/recordings/",
                    None,
                    True,
                ),
                (
                    "Replay page, segmented (warm: index from its cache)",
                    url,
                    "/replay/recordings/",
                    None,
                    False,
                ),
                (
                    "Baseline: the player loads the whole file (static server)",
                    f"{static}/",
                    "whole.cast",
                    None,
                    False,
                ),
                ("At 100 Mbit/s: replay page, segmented (warm)", url, "/replay/recordings/", 100, False),
                ("At 100 Mbit/s: baseline, whole file", f"{static}/", "whole.cast", 100, False),
            ]
            for label, target, pattern, megabits, cold in plan:
                rows.append((label, *measure(target, pattern, megabits=megabits, cold=cold)))
                print(f"  {label}: {rows[-1][1]:.0f} ms, {rows[-1][2]:,} recording bytes", flush=True)
            assert cache.exists(), "the index was not cached beside the recording"

            # Seek to the last marker: the last command's output is in the last segments.
            page = context.new_page()
            first_frame(page, url, pattern="/replay/recordings/")
            page.evaluate("() => performance.clearResourceTimings()")
            seek_start = page.evaluate("() => performance.now()")
            page.locator("ol.markers li button").last.click()
            seen = page.wait_for_function(SEEN, arg=LAST_COMMAND[:40], timeout=60_000).json_value()
            seek_ms = seen - seek_start
            seek_bytes = page.evaluate(BYTES_BEFORE, [seen, "/replay/recordings/"])
            print(f"  seek to the last marker: {seek_ms:.0f} ms, {seek_bytes:,} bytes", flush=True)
            version = browser.version
            browser.close()
    finally:
        if server is not None:
            server.shutdown()
        if daphne is not None:
            daphne.terminate()
            try:
                daphne.wait(10)
            except subprocess.TimeoutExpired:
                daphne.kill()
        shutil.rmtree(static_dir, ignore_errors=True)
        destroy()
        if not args.keep:
            shutil.rmtree(recordings, ignore_errors=True)

    lines = [
        SECTION,
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; {chromium_version(executable) or 'Chromium ' + version} "
        "headless (Playwright)",
        f"- Recording: {shape['size']:,} bytes of asciicast v2 ({shape['size'] / 1e6:.0f} MB), "
        f"{shape['duration'] / 3600:.1f} h of a shell session, {shape['markers']:,} command markers, 160x48",
        f"- Web app: daphne (ASGI) as in production, {connection.vendor}; the auditor's page is the real "
        "replay page (login, MFA, authorisation, audit row) with the vendored asciinema-player "
        f"{(ROOT / 'static/vendor/asciinema-player/VERSION').read_text().strip()}",
        f"- Index for the player: built in {index_build * 1000:.0f} ms in-process "
        f"({len(built.segments)} segments of ~{replay.SEGMENT_BYTES // 1024} KiB, "
        f"{len(built.markers):,} markers); cached beside the recording after the first request",
        "- First frame: from navigation start to the player's screen showing the recording's first output "
        f"(`performance.now()` in a MutationObserver), median of {REPEAT} loads ({REPEAT_THROTTLED} "
        "throttled) each in a fresh tab "
        "after a warm-up of both pages; "
        "bytes: response bodies fetched before that moment (Resource Timing); heap: the tab's "
        "`performance.memory.usedJSHeapSize` then",
        "",
        "| Page | First frame (ms) | Recording bytes fetched | All bytes fetched | JS heap then (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, at, rec_bytes, all_bytes, heap in rows:
        lines.append(f"| {label} | {at:,.0f} | {rec_bytes:,} | {all_bytes:,} | {heap:,.0f} |")
    lines += [
        "",
        f"Seek to the last command's marker (near the end, a segment not loaded yet): "
        f"{seek_ms:,.0f} ms until it is on screen, {seek_bytes:,} bytes fetched.",
        f"Whole run: {time.monotonic() - started:.0f} s; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other work on the machine makes the figures vary "
        "by a few hundred ms between runs).",
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if not args.no_results:
        write_results(Path(args.results), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
