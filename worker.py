"""The worker: runs participant workflows and the activities their steps call.

    python worker.py            # TEMPORAL_ADDRESS (localhost:7233), TEMPORAL_NAMESPACE (default)

Prometheus metrics (temporalio's and the engine's ``flows_messages_total``) are served on
http://localhost:9464/metrics (``METRICS_PORT``).

Stops gracefully on Ctrl-C or SIGTERM: in-flight activities finish before it exits.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from activities.contacts import ContactActivities
from activities.crm import CrmActivities
from activities.email import EmailActivities, SmtpSettings
from activities.enrollment import EnrollmentActivities
from activities.events import EventActivities
from activities.metrics import metrics_runtime
from activities.participants import ParticipantActivities
from activities.records import RecordActivities
from activities.scripts import ScriptActivities
from activities.sms import SmsActivities, TwilioSettings
from control.enrollment import suggest
from control.ingest import ingest
from models.database import PROJECT_ROOT, create_tables, get_engine
from models.encryption import Keyring
from models.payloads import data_converter
from models.settings import Settings, get_settings
from workflows.participant import ParticipantWorkflow
from workflows.sandbox import workflow_runner
from workflows.script import ScriptWorkflow

TASK_QUEUE = get_settings().task_queue
ACTIVITY_SLOTS = 32
# The dev stack's payload keys: every program started in the project folder finds them here.
DEV_PAYLOAD_KEYS = PROJECT_ROOT / ".data" / "payload-keys"


def twilio_from_settings() -> TwilioSettings | None:
    try:
        return TwilioSettings.from_settings()
    except ValueError as missing:
        print(f"worker: {missing}; SMS steps will wait and retry until it is configured")
        return None


def activities_for(
    engine: Engine, smtp: SmtpSettings | None = None, twilio: TwilioSettings | None = None
) -> list[Callable[..., Any]]:
    """Every activity the engine's steps call, bound to one database and the mail/SMS peers
    (taken from the settings when not given)."""
    crm = CrmActivities(engine)
    contacts = ContactActivities(engine)
    records = RecordActivities(engine)
    scripts = ScriptActivities(engine)
    participants = ParticipantActivities(engine)
    email = EmailActivities(engine, smtp or SmtpSettings.from_settings())
    sms = SmsActivities(engine, twilio or twilio_from_settings())
    # Flow steps enroll and announce through the client's own code paths.
    enrollment = EnrollmentActivities(engine, suggest)
    events = EventActivities(engine, ingest)
    return [
        crm.add_to_list,
        crm.remove_from_list,
        crm.choose_split_branch,
        crm.choose_form_data_branch,
        contacts.update_contact,
        contacts.distribute_to_owner,
        contacts.find_time_zone,
        records.create_follow_up,
        records.create_request,
        records.create_sale,
        scripts.prepare_script,
        scripts.run_script,
        participants.record_participant,
        email.send_email,
        email.notify_email,
        sms.send_sms,
        sms.notify_sms,
        enrollment.suggest_contact,
        events.emit_event,
    ]


def build_worker(
    client: Client,
    engine: Engine,
    *,
    task_queue: str = TASK_QUEUE,
    activities: Sequence[Callable[..., Any]] | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> Worker:
    """The worker as production runs it; tests pass their own task queue (and, for workflow-logic
    tests, activities of the same names)."""
    return Worker(
        client,
        task_queue=task_queue,
        # Script runs are children of participants: same worker, same task queue.
        workflows=[ParticipantWorkflow, ScriptWorkflow],
        workflow_runner=workflow_runner(get_settings().workflow_sandbox),
        activities=list(activities if activities is not None else activities_for(engine)),
        # Database activities (and the per-step local record) are synchronous and share this
        # pool. 32 rather than 16 (bench, tuning part): workflow tasks over 5 s fell from 229 to
        # 25 when 300 participants were enrolled at once, at the same CPU per step.
        activity_executor=executor or ThreadPoolExecutor(max_workers=ACTIVITY_SLOTS),
        max_concurrent_activities=ACTIVITY_SLOTS,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def payload_keyring(settings: Settings | None = None, address: str | None = None) -> Keyring | None:
    """The keys payloads are encrypted with: ``PAYLOAD_KEYS``, else the file
    ``PAYLOAD_KEYS_FILE``, else, for the dev stack's own server, the key it made; None: no
    encryption. ``address`` is the server connected to (default: ``TEMPORAL_ADDRESS``)."""
    settings = settings or get_settings()
    if settings.payload_keys is not None:
        return Keyring.parse(settings.payload_keys.get_secret_value())
    if settings.payload_keys_file is not None:  # named: it must be there
        return Keyring.parse(settings.payload_keys_file.read_text(encoding="utf-8"))
    if _dev_stack_server(address or settings.temporal_address, settings) and (
        DEV_PAYLOAD_KEYS.exists()
    ):
        return Keyring.parse(DEV_PAYLOAD_KEYS.read_text(encoding="utf-8"))
    return None


def _dev_stack_server(address: str, settings: Settings) -> bool:
    """Whether the address is the dev stack's server (``localhost:TEMPORAL_PORT``): its key
    applies there only, never to another server (a test's, a real cluster) by accident."""
    host, _, port = address.rpartition(":")
    return host in ("localhost", "127.0.0.1") and port == str(settings.temporal_port)


def temporal_tls(settings: Settings | None = None) -> TLSConfig | bool:
    """TLS for the Temporal connection: off unless ``TEMPORAL_TLS`` or a ``TEMPORAL_TLS_*``
    setting asks for it; mutual with a client certificate and key."""
    settings = settings or get_settings()
    files = (
        settings.temporal_tls_ca_file,
        settings.temporal_tls_cert_file,
        settings.temporal_tls_key_file,
    )
    named = settings.temporal_tls_server_name is not None or any(f is not None for f in files)
    if not (settings.temporal_tls or named):
        return False
    ca, cert, key = (None if file is None else file.read_bytes() for file in files)
    return TLSConfig(
        server_root_ca_cert=ca,
        domain=settings.temporal_tls_server_name,
        client_cert=cert,
        client_private_key=key,
    )


async def connect(
    address: str | None = None, namespace: str | None = None, runtime: Runtime | None = None
) -> Client:
    """A client, as every program connects: TLS and payload encryption from the settings. A
    worker's passes ``runtime=metrics_runtime()`` to serve Prometheus metrics."""
    settings = get_settings()
    target = address or settings.temporal_address
    return await Client.connect(
        target,
        namespace=namespace or settings.temporal_namespace,
        data_converter=data_converter(payload_keyring(settings, target)),
        tls=temporal_tls(settings),
        runtime=runtime,
    )


async def main() -> None:
    engine = get_engine()
    create_tables(engine)
    client = await connect(runtime=metrics_runtime())
    if client.data_converter.payload_codec is None:
        print("worker: payloads are not encrypted (no PAYLOAD_KEYS): histories show them as sent")
    worker = build_worker(client, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        host = client.service_client.config.target_host
        print(f"worker: polling task queue {TASK_QUEUE!r} on {host}")
        await stop.wait()
        print("worker: stopping (finishing in-flight activities)")


if __name__ == "__main__":
    asyncio.run(main())
