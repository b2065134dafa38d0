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
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import Engine
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from activities.contacts import ContactActivities
from activities.crm import CrmActivities
from activities.email import EmailActivities, SmtpSettings
from activities.enrollment import EnrollmentActivities
from activities.events import EventActivities
from activities.experiments import ExperimentActivities
from activities.metrics import metrics_runtime
from activities.participants import ParticipantActivities
from activities.records import RecordActivities
from activities.scripts import ScriptActivities
from activities.sms import SmsActivities, TwilioSettings
from control.enrollment import suggest
from control.ingest import ingest, sweep_forever
from models.database import PROJECT_ROOT, create_tables, get_engine
from models.encryption import Keyring
from models.frequency_caps import Channel
from models.payloads import data_converter
from models.sending import CHANNELS, SendingSettings, channel_task_queue, load_sending_settings
from models.settings import Settings, get_settings
from workflows.participant import ParticipantWorkflow
from workflows.reply import ReplyWorkflow
from workflows.sandbox import workflow_runner
from workflows.script import ScriptWorkflow

TASK_QUEUE = get_settings().task_queue
# The participants' sync activities (CRM steps and sends, run in the worker since behaviour 3)
# share these threads, and are mostly CPU under one GIL: more threads only take turns at it, each
# hand-over costing CPU, while a participant's workflow task waits for its steps. On two cores, 8
# threads against 32 ran the five-step flow 1.07x as fast at 0.96x the CPU per step, with a third
# of the workflow tasks over 5 s (bench, tuning part). A send waiting on a remote SMTP relay
# holds its thread, so a slow relay caps sends at threads / latency: ACTIVITY_THREADS raises it.
ACTIVITY_SLOTS = get_settings().activity_threads
# Sends on a channel's task queue run on threads of their own, beside the participants' slots.
CHANNEL_ACTIVITY_SLOTS = 16
# The activities each channel's task queue serves (sends of participants under the
# sending-discipline patch; older ones send on the participants' queue).
CHANNEL_ACTIVITIES: dict[Channel, frozenset[str]] = {
    "email": frozenset({"send_email", "notify_email"}),
    "sms": frozenset({"send_sms", "notify_sms"}),
}
# The dev stack's payload keys: every program started in the project folder finds them here.
DEV_PAYLOAD_KEYS = PROJECT_ROOT / ".data" / "payload-keys"


def twilio_from_settings() -> TwilioSettings | None:
    try:
        return TwilioSettings.from_settings()
    except ValueError as missing:
        print(f"worker: {missing}; SMS steps will wait and retry until it is configured")
        return None


def sending_from_settings(settings: Settings | None = None) -> SendingSettings:
    """The sending settings document ``SENDING_SETTINGS_FILE`` names (none: no caps, no
    limits); an invalid one stops the worker at start."""
    return load_sending_settings((settings or get_settings()).sending_settings_file)


def activities_for(
    engine: Engine,
    smtp: SmtpSettings | None = None,
    twilio: TwilioSettings | None = None,
    sending: SendingSettings | None = None,
) -> list[Callable[..., Any]]:
    """Every activity the engine's steps call, bound to one database, the mail/SMS peers and
    the frequency caps (taken from the settings when not given)."""
    sending = sending or sending_from_settings()
    crm = CrmActivities(engine)
    contacts = ContactActivities(engine)
    records = RecordActivities(engine)
    scripts = ScriptActivities(engine)
    participants = ParticipantActivities(engine)
    email = EmailActivities(engine, smtp or SmtpSettings.from_settings(), sending=sending)
    sms = SmsActivities(engine, twilio or twilio_from_settings(), sending=sending)
    # Flow steps enroll and announce through the client's own code paths.
    enrollment = EnrollmentActivities(engine, suggest)
    events = EventActivities(engine, ingest)
    experiments = ExperimentActivities(engine)
    return [
        crm.add_to_list,
        crm.remove_from_list,
        crm.choose_split_branch,
        crm.choose_form_data_branch,
        experiments.choose_experiment_path,
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
        email.send_email_locally,
        email.notify_email,
        sms.send_sms,
        sms.send_sms_locally,
        sms.notify_sms,
        enrollment.suggest_contact,
        events.emit_event,
    ]


class EngineWorker:
    """The participants' worker and one worker per sending channel, run together (``async
    with``): what ``python worker.py`` runs, and what tests and the bench start."""

    def __init__(
        self,
        participants: Worker,
        channels: Sequence[Worker],
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.participants = participants
        self.channels = list(channels)
        self._executor = executor  # the channel workers' threads, shut down with them
        self._running = AsyncExitStack()

    @property
    def task_queue(self) -> str:
        return self.participants.task_queue

    async def __aenter__(self) -> EngineWorker:
        async with AsyncExitStack() as starting:
            for worker in (self.participants, *self.channels):
                await starting.enter_async_context(worker)
            self._running = starting.pop_all()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._running.__aexit__(kind, error, traceback)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)


def _activity_name(function: Callable[..., Any]) -> str | None:
    definition = activity._Definition.from_callable(function)
    return None if definition is None else definition.name


def channel_workers(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    sending: SendingSettings,
    executor: ThreadPoolExecutor,
) -> list[Worker]:
    """A worker for each channel's task queue that has activities among ``activities``, with
    the channel's rate limit: Temporal dispatches at most that many of the queue's activities
    per second across every worker polling it, and a burst waits in the queue, durably."""
    workers: list[Worker] = []
    for channel in CHANNELS:
        sends = [a for a in activities if _activity_name(a) in CHANNEL_ACTIVITIES[channel]]
        if not sends:
            continue
        workers.append(
            Worker(
                client,
                task_queue=channel_task_queue(task_queue, channel),
                activities=sends,
                activity_executor=executor,
                max_concurrent_activities=CHANNEL_ACTIVITY_SLOTS,
                max_task_queue_activities_per_second=sending.rate_limits.of(channel),
                graceful_shutdown_timeout=timedelta(seconds=10),
            )
        )
    return workers


def build_worker(
    client: Client,
    engine: Engine,
    *,
    task_queue: str = TASK_QUEUE,
    activities: Sequence[Callable[..., Any]] | None = None,
    executor: ThreadPoolExecutor | None = None,
    sending: SendingSettings | None = None,
) -> EngineWorker:
    """The worker as production runs it; tests pass their own task queue (and, for workflow-logic
    tests, activities of the same names). ``sending`` (default: ``SENDING_SETTINGS_FILE``) sets
    the channels' rate limits; the caps are the activities' (``activities_for``), and so is the
    choice to send in this worker (a channel without a rate limit) or on the channel's queue:
    activities passed in must be made with the same ``sending``."""
    sending = sending or sending_from_settings()
    activities = list(
        activities if activities is not None else activities_for(engine, sending=sending)
    )
    participants = Worker(
        client,
        task_queue=task_queue,
        # Script runs are children of participants: same worker, same task queue. Replies to
        # forms are started by ingest on it too.
        workflows=[ParticipantWorkflow, ScriptWorkflow, ReplyWorkflow],
        workflow_runner=workflow_runner(get_settings().workflow_sandbox),
        activities=activities,
        # Database activities, local ones included, are synchronous and share this pool
        # (ACTIVITY_SLOTS above says why it is small).
        activity_executor=executor or ThreadPoolExecutor(max_workers=ACTIVITY_SLOTS),
        max_concurrent_activities=ACTIVITY_SLOTS,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    sends = ThreadPoolExecutor(max_workers=CHANNEL_ACTIVITY_SLOTS, thread_name_prefix="send")
    channels = channel_workers(client, task_queue, activities, sending, sends)
    return EngineWorker(participants, channels, sends)


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
        queues = ", ".join(repr(w.task_queue) for w in (worker.participants, *worker.channels))
        print(f"worker: polling task queues {queues} on {host}")
        # Clicks, opens and forms recorded while the engine could not be reached.
        sweeping = asyncio.create_task(sweep_forever(client, engine, task_queue=worker.task_queue))
        await stop.wait()
        sweeping.cancel()
        print("worker: stopping (finishing in-flight activities)")


if __name__ == "__main__":
    asyncio.run(main())
