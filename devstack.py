"""The whole product on one machine: `make run`.

Starts the Temporal dev server (Web UI on :8233, state kept in .data/ so waiting participants
resume after a restart), a local SMTP inbox and a Twilio-compatible SMS endpoint, seeds the demo
CRM, deploys the demo flows (``control.demo``: ``welcome`` with its working-day sending window,
``hello`` with none, so a message arrives at any hour), enrolls the demo contacts in both and runs
the worker until Ctrl-C, which stops every process it started.

The flows console (:8029) serves the demo login printed in the banner (an admin, its password
made on the first run and kept in .data/console-password).

Payloads are encrypted with a key made on the first run (.data/payload-keys, which every program
started in the project folder uses for this server), and the Web UI decodes them through the
codec server (:8028) for a browser signed in with the token in .data/codec-token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine

from activities.metrics import metrics_runtime
from codec_server.app import CodecServerSettings
from codec_server.app import create_app as create_codec_app
from console.app import create_app as create_console_app
from console.web import ConsoleSettings
from control.demo import start_demo
from models import search_attributes as sa
from models.accounts import AccountError, Role, add_user
from models.database import PROJECT_ROOT, create_tables, get_engine, session
from models.demo import seed_demo
from models.encryption import Keyring
from models.settings import get_settings
from tracking.app import TrackingSettings, create_app
from tracking.server import serving
from worker import DEV_PAYLOAD_KEYS, TASK_QUEUE, build_worker, connect

DATA = PROJECT_ROOT / ".data"
BIN = Path(sys.executable).parent
OUTBOX = DATA / "outbox"

_settings = get_settings()
TEMPORAL_PORT = _settings.temporal_port
UI_PORT = _settings.temporal_ui_port
SMTP_PORT = _settings.smtp_port
SMS_PORT = _settings.sms_port
TRACKING_PORT = _settings.tracking_port
CODEC_PORT = _settings.codec_server_port
CODEC_ENDPOINT = f"http://localhost:{CODEC_PORT}/codecs"
CONSOLE_PORT = _settings.console_port
DEMO_LOGIN = "demo@example.com"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _services() -> dict[str, tuple[list[str], int]]:
    attributes = [
        f"--search-attribute={k.name}={k.indexed_value_type.name.title()}" for k in sa.ALL
    ]
    return {
        "temporal": (
            [
                str(BIN / "temporal"),
                "server",
                "start-dev",
                "--port",
                str(TEMPORAL_PORT),
                "--ui-port",
                str(UI_PORT),
                "--db-filename",
                str(DATA / "temporal.db"),
                "--log-level",
                "warn",
                "--ui-disable-news-fetch",
                # The Web UI asks the codec server (served below) to decrypt what it shows.
                "--ui-codec-endpoint",
                CODEC_ENDPOINT,
                *attributes,
            ],
            TEMPORAL_PORT,
        ),
        "smtp inbox": (
            [
                sys.executable,
                "-m",
                "peers.smtp_inbox",
                "--port",
                str(SMTP_PORT),
                "--maildir",
                str(OUTBOX / "mail"),
            ],
            SMTP_PORT,
        ),
        "sms endpoint": (
            [
                sys.executable,
                "-m",
                "peers.twilio_api",
                "--port",
                str(SMS_PORT),
                "--store",
                str(OUTBOX / "sms.jsonl"),
            ],
            SMS_PORT,
        ),
    }


@contextlib.contextmanager
def running_services() -> Iterator[None]:
    """Start each service whose port is free; stop what we started on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    log = (DATA / "services.log").open("ab")
    try:
        for name, (command, port) in _services().items():
            if _listening(port):
                print(f"  {name}: already listening on :{port}, using it")
                continue
            # A new process group, so Ctrl-C in the terminal reaches us first and we stop them.
            started.append(
                subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
            )
            print(f"  {name}: started on :{port} (log: .data/services.log)")
        yield
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def _dev_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A secret made on the first run and kept in .data/, readable by this user only: links in
    mail already sent keep working after a restart, and so do a POST /events caller's token, the
    codec server's and the payload key."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(make() + "\n")
    return path.read_text().strip()


def _demo_login(engine: Engine) -> str:
    """The console's demo admin, made on the first run; its password is kept in .data/."""
    password = _dev_secret(DATA / "console-password", lambda: secrets.token_urlsafe(12))
    with session(engine) as db, contextlib.suppress(AccountError):  # made on an earlier run
        add_user(db, DEMO_LOGIN, password, Role.admin, "Demo")
    return password


async def _wait_for_temporal() -> None:
    for _ in range(120):
        try:
            await connect(f"localhost:{TEMPORAL_PORT}")
            return
        except RuntimeError:
            await asyncio.sleep(0.5)
    raise SystemExit("the Temporal dev server did not come up: see .data/services.log")


async def main() -> None:
    DATA.mkdir(exist_ok=True)
    # The worker sends through the local peers; any real settings in the environment win.
    for name, value in {
        "TEMPORAL_ADDRESS": f"localhost:{TEMPORAL_PORT}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(SMTP_PORT),
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "dev-stack",
        "TWILIO_API_BASE": f"http://127.0.0.1:{SMS_PORT}",
        "TRACKING_BASE_URL": f"http://localhost:{TRACKING_PORT}",
        "TRACKING_SECRET": _dev_secret(DATA / "tracking-secret"),
        "TRACKING_EVENTS_TOKEN": _dev_secret(DATA / "events-token"),
        "CODEC_SERVER_TOKEN": _dev_secret(DATA / "codec-token"),
        "CONSOLE_SECRET": _dev_secret(DATA / "console-secret"),
    }.items():
        os.environ.setdefault(name, value)
    # Payloads encrypted by default: a key of its own, where worker.connect finds it.
    _dev_secret(DEV_PAYLOAD_KEYS, lambda: Keyring.new_entry("dev-1"))
    get_settings.cache_clear()  # the worker and the tracking service read them from here on
    print("Starting the marketing flows dev stack")
    with running_services():
        await _wait_for_temporal()
        engine = get_engine()
        create_tables(engine)
        with session(engine) as db:
            seed_demo(db)
        demo_password = _demo_login(engine)
        client = await connect(runtime=metrics_runtime())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tracking = create_app(engine, client, TrackingSettings.from_settings(TASK_QUEUE))
        codec = CodecServerSettings.from_settings()
        console = ConsoleSettings.from_settings(TASK_QUEUE, outbox=OUTBOX)
        async with (
            build_worker(client, engine),
            serving(tracking, host="127.0.0.1", port=TRACKING_PORT),
            serving(create_codec_app(codec), host=codec.host, port=codec.port),
            serving(
                create_console_app(engine, client, console), host=console.host, port=console.port
            ),
        ):
            demo = await start_demo(client, engine, TASK_QUEUE)
            enrolled = "\n".join(
                f"  Flow {d.stored.flow.id!r} v{d.stored.version}: {len(d.report.enrolled)} "
                f"contacts enrolled now, {len(d.report.refused)} not "
                f"({', '.join(sorted(set(d.report.refused.values()))) or '-'})"
                + (f"; not deployed again: {d.not_deployed}" if d.not_deployed else "")
                for d in demo
            )
            flow_id = demo[0].stored.flow.id
            query = f"FlowId='{flow_id}'"
            print(
                f"""
{enrolled}
  'hello' has no sending window: its email is in the console's outbox within a minute.
  'welcome' sends within its window (working days 08:00-17:00, Europe/Stockholm).

  Console       http://localhost:{CONSOLE_PORT}  sign in as {DEMO_LOGIN} / {demo_password}
  Temporal UI   http://localhost:{UI_PORT}/namespaces/default/workflows?query={query}
  Waiting       http://localhost:{UI_PORT}/namespaces/default/workflows?query=FlowId%3D'{flow_id}'%20AND%20FlowStep%3D'nurture-wait'
  Status        .venv/bin/python starter.py status {flow_id}
  Stats         .venv/bin/python starter.py stats {flow_id}
  Diagram       .venv/bin/python starter.py diagram {flow_id}
  Dry run       .venv/bin/python starter.py simulate {flow_id} --contact 1
  Metrics       http://localhost:{get_settings().metrics_port}/metrics
  Sent          .venv/bin/python starter.py outbox  (inbox :{SMTP_PORT}, SMS :{SMS_PORT})
  Tracking      http://localhost:{TRACKING_PORT}  (links in sent mail; forms: POST /f/ID)
  Payloads      encrypted (key {codec.keyring.current.id}, .data/payload-keys); to see them
                decoded in the UI, sign in at {CODEC_ENDPOINT}/login with the token in
                .data/codec-token and tick "Include cross-origin credentials" in the UI's
                codec server settings
  Database      {engine.url}

  The worker is running. Ctrl-C stops everything; `make run` again resumes waiting participants.
"""
            )
            await stop.wait()
            print("stopping…")


if __name__ == "__main__":
    asyncio.run(main())
