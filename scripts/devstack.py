#!/usr/bin/env python3
"""`make run`: the embedded dev stack in one terminal.

Starts OpenBao with its data on disk under var/openbao/ (vault/embedded.py: initialised
at the first run, unsealed at each start; on 127.0.0.1:PAMSITE_VAULT_PORT, 8200 by
default), unless VAULT_ADDR points at another Vault; migrates,
bootstraps Vault, creates a first pam-admin if none exists, starts the web app
(ASGI, daphne) on 127.0.0.1:8000, the worker and the SSH gateway on 127.0.0.1:2222,
and prints how to sign in. Ctrl-C stops every
process it started.

With PAMSITE_DEMO=1 (`make demo`), and on every later run once var/demo/ is set up (unless
PAMSITE_DEMO=0), it also starts the demo PACS host (an sshd, access/demo.py) and prints the
demo's walk-through.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # pamsite's own modules (vault.embedded, pamsite.env)
BIN = Path(sys.executable).parent
VAR = Path(os.environ.get("PAMSITE_VAR_DIR", ROOT / "var"))
LOGS = VAR / "log"
WEB_HOST, WEB_PORT = "127.0.0.1", int(os.environ.get("PAMSITE_WEB_PORT", "8000"))

children: list[tuple[str, subprocess.Popen]] = []


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def port_busy(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115  (kept open for the child's life)
    # Own process group: Ctrl-C reaches only this script, which stops the children in order.
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    children.append((name, proc))
    say(f"started {name} (pid {proc.pid}, log {log.name})")
    return proc


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def start_embedded_vault(env: dict[str, str]) -> None:
    """OpenBao on var/openbao/ (raft storage): initialised at the first run, unsealed at each one."""
    from django.core.exceptions import ImproperlyConfigured

    from pamsite.env import env_int
    from vault.embedded import EmbeddedOpenBao, EmbeddedVaultError

    try:
        port = env_int("PAMSITE_VAULT_PORT", 8200, minimum=1, maximum=65534)
    except ImproperlyConfigured as exc:
        raise SystemExit(f"[make run] {exc}") from None
    server = EmbeddedOpenBao(VAR / "openbao", port=port, log_path=LOGS / "openbao.log", echo=say)
    older_in_memory_run = not server.has_data() and (VAR / "vault-approle").exists()
    say(f"starting OpenBao on {server.addr} (data in {server.raft_dir}, log {server.log})")
    try:
        server.start()
    except EmbeddedVaultError as exc:
        raise SystemExit(f"[make run] {exc}") from None
    finally:
        if server.process is not None:
            children.append(("openbao", server.process))
    if older_in_memory_run and server.initialised_now:
        say(
            "note: var/ holds pamsite's data from a Vault that is not in var/openbao/ (an older "
            "`make run` kept Vault in memory only, or var/openbao/ was removed): that Vault is gone, "
            "and a new one, kept on disk from now on, was made in var/openbao/. Recordings it signed "
            'verify with the public keys pamsite kept, or show "cannot check: signing key not found" '
            "(sealed before pamsite kept keys); set up each ssh-ca, static and database account "
            'again (Targets, "Vault setup"): a static account\'s last password was only in that '
            "Vault, so reset it on the target first."
        )
    say(f"OpenBao ready on {server.addr} (raft storage in {server.raft_dir}: kept across restarts)")
    env["VAULT_ADDR"] = server.addr
    # The bootstrap authenticates with the root token kept at initialisation (never printed).
    env.pop("VAULT_TOKEN", None)
    env["VAULT_TOKEN_FILE"] = str(server.root_token_path)


def demo_wanted() -> bool:
    """`make demo` (PAMSITE_DEMO=1) sets the demo up; once it is, later runs start it too."""
    choice = os.environ.get("PAMSITE_DEMO", "").strip()
    if choice not in ("", "0", "1"):
        raise SystemExit(f"PAMSITE_DEMO must be 1 (the demo), 0 (no demo) or unset, not {choice!r}.")
    return choice == "1" or (choice == "" and (VAR / "demo" / "sshd_config").exists())


def _interrupt(signum, frame) -> None:
    # One interrupt is enough: ignore the rest (a terminal sends SIGINT to the whole
    # group, `timeout` or systemd may follow with SIGTERM) while everything stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_all(*_args) -> None:
    # A second Ctrl-C (or the terminal's SIGTERM) must not cut the clean-up short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # OpenBao last: the gateway seals its recordings (a Vault signature) as it stops.
    last = [c for c in children if c[0] == "openbao"]
    for group in ([c for c in children if c[0] != "openbao"], last):
        for _name, proc in reversed(group):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(group):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            say(f"stopped {name}")
    children.clear()


def main() -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    demo = demo_wanted()

    if port_busy(WEB_HOST, WEB_PORT):
        raise SystemExit(f"Port {WEB_PORT} on {WEB_HOST} is already in use: stop what runs there first.")
    try:
        if "VAULT_ADDR" in os.environ:
            say(f"using the Vault at {env['VAULT_ADDR']} (VAULT_ADDR is set)")
        else:
            start_embedded_vault(env)

        manage("migrate", "--noinput", env=env)
        approle_dir = VAR / "vault-approle"
        manage("vault_bootstrap", "--write-approle", str(approle_dir), env=env)
        # The web app and later the gateway and worker use the narrow AppRole, not the root token.
        app_env = dict(env)
        app_env.pop("VAULT_TOKEN_FILE", None)
        app_env["VAULT_TOKEN"] = ""  # not even the dev default (the embedded root token)
        app_env["VAULT_ROLE_ID_FILE"] = str(approle_dir / "role_id")
        app_env["VAULT_SECRET_ID_FILE"] = str(approle_dir / "secret_id")
        manage("ensure_first_admin", env=env)
        if demo:
            # The demo PACS host starts first so that it stops last, after the gateway's sessions.
            manage("demo_setup", "--prepare", env=app_env)
            start("demo-sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(VAR / "demo" / "sshd_config")], env)

        start(
            "web",
            [str(BIN / "daphne"), "-b", WEB_HOST, "-p", str(WEB_PORT), "pamsite.asgi:application"],
            app_env,
        )
        start("worker", [sys.executable, "manage.py", "access_sweep", "--loop"], app_env)
        start("audit-forwarder", [sys.executable, "manage.py", "audit_forward", "--loop"], app_env)
        start("gateway", [sys.executable, "manage.py", "ssh_gateway"], app_env)
        start("sessions", [sys.executable, "manage.py", "sessions_maintain", "--loop"], app_env)
        say("")
        say(f"pamsite is running: open http://{WEB_HOST}:{WEB_PORT}/ and sign in with the account above")
        say("(first sign-in: scan the QR code with an authenticator app, then keep the backup codes).")
        gateway_listen = app_env.get("GATEWAY_LISTEN", "127.0.0.1:2222")
        gateway_port = gateway_listen.rsplit(":", 1)[1]
        say(f"SSH gateway on {gateway_listen}: ssh -p {gateway_port} USER:ACCOUNT@localhost")
        if demo:
            # Its Vault and login steps log at INFO: the walk-through is what the newcomer reads.
            demo_env = {**app_env, "LOG_LEVEL": app_env.get("LOG_LEVEL", "warning")}
            manage("demo_setup", f"--web-url=http://{WEB_HOST}:{WEB_PORT}/", env=demo_env)
        say("Ctrl-C stops everything.")
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    say(f"{name} exited with status {proc.returncode}: see {LOGS / (name + '.log')}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except subprocess.CalledProcessError as exc:
        say(f"a step failed ({' '.join(exc.cmd[1:3])}), exit status {exc.returncode}")
        return 1
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
