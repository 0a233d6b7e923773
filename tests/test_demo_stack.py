"""`make demo` from a fresh clone, then the walk-through it prints, as a newcomer follows it.

The repository's HEAD is cloned into a temporary folder (committed work only), whose
``.venv`` is a link to the virtualenv running this test (``make deps`` then finds it
installed: the clone's run skips minutes of pip). ``make demo`` runs there as `make run`
would, on ports of its own (the pages and the walk-through still say port 2222, through
GATEWAY_PUBLIC_PORT, as on a default install), with a throwaway OS user for the static account. Then, in
Chromium: the requester signs in for the first time (TOTP enrolment, codes computed from the
key the page shows), asks for demo-root; the approver signs in and approves; the requester
connects with the real OpenSSH client through the gateway (password and code through
SSH_ASKPASS) in a terminal (a pty), types commands key by key and exits; the auditor finds
the session, sees every recording intact and replays it. Then Ctrl-C (SIGINT to make's
process group, as a terminal sends it) stops the stack: every process it started is gone.
A second ``make demo`` then starts the demo host again on the same var/ (Vault kept on disk),
changes nothing and prints the same walk-through; Ctrl-C stops it as cleanly.

Screenshots go to ``test-artifacts/demo/`` (the README's ``docs/demo-*.png`` are taken from them).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.gateway import ASKPASS
from tests.fixtures.openbao import free_port
from tests.fixtures.sshd import USER_PREFIX
from tests.fixtures.waiting import wait_for
from tests.secrets_registry import remember_secret
from tests.totp import key_from_base32, totp_code

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "demo"
READY = "[make run] Ctrl-C stops everything."
START_TIMEOUT = 300  # a fresh clone migrates a new database on a busy 2-CPU machine
VIEWPORT = {"width": 1200, "height": 800}


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, start time in ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[1]), fields[19])
    return found


def _descendants(pid: int) -> dict[int, str]:
    """The process's descendants now: pid -> start time (to tell a reused pid apart)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    entry = _processes().get(pid)
    return entry is not None and entry[1] == started


def _inside(pid: int, folder: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(folder)
    except OSError:
        return False


class DemoStack:
    """`make demo` running in a fresh clone; its terminal output in ``terminal.txt``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.clone = workdir / "pamsite"
        self.web_port, self.gateway_port = free_port(), free_port()
        self.vault_port, self.demo_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.web_port}/"
        self.os_user = f"{USER_PREFIX}{secrets.token_hex(4)}"
        self.terminal = workdir / "terminal.txt"
        self.process: subprocess.Popen | None = None
        self.seen: dict[int, str] = {}
        self.run_starts: list[int] = []  # where each run's output starts in terminal.txt

    def clone_head(self) -> None:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(self.clone)], check=True)
        subprocess.run(["git", "-C", str(self.clone), "checkout", "--quiet", head], check=True)
        (self.clone / ".venv").symlink_to(Path(sys.prefix))
        # Older than the venv's install stamp, as in the checkout the venv was made from: make
        # deps then sees it installed (a changed requirements file still has no stamp: it installs).
        for name in ("requirements.txt", "requirements-dev.txt"):
            os.utime(self.clone / name, (0, 0))

    def start(self) -> None:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PAMSITE_WEB_PORT": str(self.web_port),
            "PAMSITE_VAULT_PORT": str(self.vault_port),
            "PAMSITE_BASE_URL": self.base.rstrip("/"),
            "GATEWAY_LISTEN": f"127.0.0.1:{self.gateway_port}",
            # Users are told port 2222, as on a default install (GATEWAY_PUBLIC_PORT: how they
            # reach the gateway, e.g. through a port forward); this test connects to its own port.
            "GATEWAY_PUBLIC_PORT": "2222",
            "GATEWAY_WORKERS": "1",
            "PAMSITE_DEMO_SSH_PORT": str(self.demo_port),
            "PAMSITE_DEMO_OS_USER": self.os_user,
        }
        self.run_starts.append(len(self.output()) if self.terminal.exists() else 0)
        with self.terminal.open("ab") as out:
            self.process = subprocess.Popen(
                ["make", "demo"],
                cwd=self.clone,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )

    def output(self) -> str:
        return self.terminal.read_text(errors="replace")

    def wait_until_ready(self) -> str:
        """This run's terminal output, once it has printed the walk-through."""
        since = self.run_starts[-1]

        def ready():
            text = self.output()[since:]
            if self.process.poll() is not None:
                pytest.fail(f"make demo exited with {self.process.returncode}:\n{text[-4000:]}")
            return READY in text

        wait_for(ready, "make demo to print its walk-through", timeout=START_TIMEOUT, interval=0.5)
        self.remember_processes()
        return self.output()[since:]

    def remember_processes(self) -> None:
        self.seen.update(_descendants(self.process.pid))

    def stop(self) -> None:
        """Ctrl-C, as in a terminal: SIGINT to make's process group; then wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.remember_processes()
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"make demo did not stop within 90 s of Ctrl-C:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """Whatever is left, after a failure: the group and every process it started."""
        self.remember_processes()
        for pid, started in self.seen.items():
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def leftovers(self) -> list[str]:
        """Processes of the stack still running: started by it, or working inside the clone."""
        left = [pid for pid, started in self.seen.items() if _alive(pid, started)]
        left += [pid for pid in _processes() if pid not in left and _inside(pid, self.clone)]
        return [f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}" for pid in left]

    def remove_os_user(self) -> None:
        if subprocess.run(["id", self.os_user], capture_output=True).returncode == 0:
            wait_for(
                lambda: (
                    subprocess.run(["userdel", "-r", self.os_user], capture_output=True).returncode
                    in (0, 6, 12)
                ),
                f"userdel {self.os_user}",
                timeout=10,
            )


@pytest.fixture
def demo_stack(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("This test runs make demo as root (here and in CI): the static account needs it.")
    stack = DemoStack(tmp_path)
    stack.clone_head()
    try:
        stack.start()
        yield stack
    finally:
        if stack.process is not None:
            if stack.process.poll() is None:
                stack.stop()
            stack.kill()
        (ARTIFACTS / "terminal.txt").write_text(_redacted(stack.output()) if stack.terminal.exists() else "")
        stack.remove_os_user()


def _redacted(output: str) -> str:
    """The terminal output for test-artifacts/, without the passwords it showed."""
    output = re.sub(r"(?m)^(  password: )\S+", r"\1(redacted)", output)
    return re.sub(r"(?m)^(  (?:requester|approver|auditor)\s+)[A-Za-z0-9]{16}(?=\s)", r"\1(redacted)", output)


def _passwords(walkthrough: str) -> dict[str, str]:
    found = dict(re.findall(r"^  (requester|approver|auditor)\s+([A-Za-z0-9]{16})\s", walkthrough, re.M))
    assert sorted(found) == ["approver", "auditor", "requester"], walkthrough
    for password in found.values():
        remember_secret(password, "a demo user's password")
    return found


class Person:
    """One persona in a browser context of their own, with the authenticator key they enrolled."""

    def __init__(self, browser, base: str, username: str, password: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.base, self.username, self.password = base, username, password
        self.key = b""
        self.last_step = 0

    def first_sign_in(self) -> None:
        page = self.page
        page.goto(self.base)
        page.fill("#id_username", self.username)
        page.fill("#id_password", self.password)
        page.click("button[type=submit]")
        page.wait_for_url("**/mfa/enrol/**")
        secret = remember_secret(page.inner_text("#totp-secret").strip(), "a demo user's TOTP key")
        self.key = key_from_base32(secret)
        page.fill("#id_code", self.next_code())
        page.click("text=Activate")
        for code in page.locator("#backup-codes li").all_inner_texts():
            remember_secret(code.strip(), "a demo user's backup code")
        page.click("text=I have saved them")
        assert page.inner_text("h1").startswith("Welcome")

    def next_code(self) -> str:
        """A code not used yet: this 30-second step's, or the next one's (the site takes ±1 step)."""
        self.last_step = max(int(time.time() // 30), self.last_step + 1)
        return totp_code(self.key, at=self.last_step * 30)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class Terminal:
    """The real ssh client in a pty (100 x 24), read by a thread, typed into key by key."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.buffer = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the client exited and closed the pty
                return
            if not data:
                return
            with self.lock:
                self.buffer.extend(data)

    def text(self) -> str:
        with self.lock:
            return self.buffer.decode(errors="replace")

    def wait_for_text(self, pattern: str, what: str, *, since: int = 0, timeout: float = 60) -> None:
        def seen():
            if self.process.poll() is not None and not self.reader.is_alive():
                pytest.fail(f"ssh exited ({self.process.returncode}) before {what}:\n{self.text()[-2000:]}")
            return re.search(pattern, self.text()[since:])

        wait_for(seen, what, timeout=timeout)

    def type_line(self, line: str) -> None:
        """Type as a person does: each key once the previous one has been echoed."""
        for char in line:
            before = len(self.text())
            os.write(self.master, char.encode())
            wait_for(lambda before=before: len(self.text()) > before, f"the echo of {char!r}", timeout=20)
        os.write(self.master, b"\r")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


PROMPT = r"[#$] (\x1b\[[0-9;]*m)*$"


def test_make_demo_from_a_fresh_clone_then_the_walk_through(demo_stack, browser, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    walkthrough = demo_stack.wait_until_ready()
    passwords = _passwords(walkthrough)
    gateway = "ssh -p 2222 requester:demo-root@localhost"
    assert f"4. In a terminal: {gateway}\n" in walkthrough
    assert f"an sshd on 127.0.0.1:{demo_stack.demo_port} run as root" in walkthrough
    assert "Demo set up:" in walkthrough and "pinned the host key of demo-pacs" in walkthrough

    # 1. The requester signs in (enrols TOTP) and asks for demo-root.
    requester = Person(browser, demo_stack.base, "requester", passwords["requester"])
    requester.first_sign_in()
    page = requester.page
    page.click("text=My access")
    page.click("text=Request access")
    page.select_option("#id_account", "demo-root")
    page.fill("#id_duration_minutes", "30")
    page.fill("#id_ticket", "INC-1234")
    page.fill("#id_reason", "Check the archive mount on the demo PACS after last night's alert.")
    requester.shot("request")
    page.click("text=Send request")
    page.wait_for_url("**/access/requests/*/")
    assert "Waiting for approval" in page.inner_text("main")

    # 2. The approver signs in (enrols) and approves it.
    approver = Person(browser, demo_stack.base, "approver", passwords["approver"])
    approver.first_sign_in()
    approver.page.click("text=Approvals")
    assert "demo-root" in approver.page.inner_text("table")
    approver.shot("approvals")
    approver.page.click("button[value=approve]")
    approver.page.wait_for_selector("text=Nothing waiting")

    page.click("text=My access")
    page.click("text=Details")
    assert page.inner_text("#grant-state") == "Active"
    assert page.inner_text("#connect-command") == gateway
    requester.shot("grant")

    # 3. The requester connects through the gateway with OpenSSH, in a terminal, and works.
    public = (demo_stack.clone / "var" / "gateway" / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[localhost]:{demo_stack.gateway_port} {public[0]} {public[1]}\n")
    askpass = tmp_path / "askpass"
    askpass.write_text(ASKPASS.format(python=sys.executable))
    askpass.chmod(0o700)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
        "PAMSITE_TEST_ASKPASS_LOG": str(tmp_path / "askpass.log"),
        "PAMSITE_TEST_PASSWORD": passwords["requester"],
        "PAMSITE_TEST_CODE": requester.next_code(),
    }
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
    ]
    argv += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1", "-t"]
    argv += ["-p", str(demo_stack.gateway_port), "requester:demo-root@localhost"]
    terminal = Terminal(argv, env)
    try:
        terminal.wait_for_text(PROMPT, "the demo host's shell prompt")
        for command, answer in (
            ("hostname", r"\n.+\r?\n"),
            ("id", r"uid=0\(root\)"),
            ("echo pacs-$((6*7))", r"pacs-42"),
        ):
            since = len(terminal.text())
            terminal.type_line(command)
            terminal.wait_for_text(answer, f"the output of {command}", since=since + len(command))
            terminal.wait_for_text(PROMPT, f"the prompt after {command}", since=since + len(command))
        terminal.type_line("exit")
        assert terminal.process.wait(timeout=30) == 0, terminal.text()[-2000:]
    finally:
        terminal.close()
    demo_stack.remember_processes()
    casts = list((demo_stack.clone / "var" / "recordings").rglob("channel-*.cast"))
    assert len(casts) == 1 and "pacs-42" in casts[0].read_text()

    # 4. The auditor finds the session: every recording intact (sha256 and Vault's signature).
    auditor = Person(browser, demo_stack.base, "auditor", passwords["auditor"])
    auditor.first_sign_in()
    page = auditor.page
    page.click("nav >> text=Sessions")
    page.click("a.session-link")

    def sealed():
        page.reload()
        states = page.locator("td.integrity").evaluate_all("cells => cells.map(c => c.dataset.state)")
        return states and set(states) == {"intact"}

    wait_for(sealed, "the session's recordings to be sealed and intact", timeout=60, interval=1)
    auditor.shot("session")
    page.click("text=Replay")
    page.goto(page.url + "?autoplay=1")  # as the play button does, without aiming at it
    page.wait_for_function(
        "() => document.querySelector('.ap-term')?.innerText.includes('pacs-42')", timeout=30_000
    )
    markers = page.locator("ol.markers li").all_inner_texts()
    assert any("echo pacs-$((6*7))" in m for m in markers), markers
    auditor.shot("replay")

    # 5. Ctrl-C: everything the stack started stops.
    demo_stack.stop()
    assert_stopped(demo_stack)

    # 6. make demo again: the demo host starts again, nothing changes, the same walk-through.
    demo_stack.start()
    again = demo_stack.wait_until_ready()
    assert "Demo already set up: nothing changed.\n" in again
    assert _walkthrough(again) == _walkthrough(walkthrough)
    demo_stack.stop()
    assert_stopped(demo_stack)


def _walkthrough(output: str) -> str:
    return output[output.index("=" * 78) : output.rindex("=" * 78)]


def assert_stopped(demo_stack: DemoStack) -> None:
    """The run's stack has stopped: each process it started is gone, its ports are free."""
    output = demo_stack.output()[demo_stack.run_starts[-1] :]
    assert "[make run] stopped demo-sshd" in output and "[make run] stopped openbao" in output
    # make's python, OpenBao, the demo sshd, web, worker, forwarder, gateway, upkeep
    assert len(demo_stack.seen) >= 8
    assert demo_stack.leftovers() == []
    for port in (demo_stack.web_port, demo_stack.gateway_port, demo_stack.demo_port, demo_stack.vault_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
