"""The workspace's sending settings: one JSON document for every flow (``SENDING_SETTINGS_FILE``).

    {
      "frequency_caps": [
        {"channel": "email", "max_messages": 2, "days": 7},
        {"channel": "sms", "max_messages": 1, "days": 1}
      ],
      "rate_limits": {"email": 20, "sms": 5}
    }

- ``frequency_caps``: marketing messages one contact may get per channel across all flows
  (``models.frequency_caps``); several caps on one channel must all hold.
- ``rate_limits``: messages per second the whole cluster hands to the provider of each channel.
  Sends go to a task queue per channel (``channel_task_queue``), whose workers ask Temporal to
  dispatch at most this many of its activities per second: a burst waits in the queue. A channel
  without a limit needs no queue: participants started with behaviour 2 send there in a local
  activity of their own worker (``workflows.steps.SENDS_IN_WORKER``).

``starter.py validate`` checks the document; the worker reads it once at start.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field

from models.flow import Flow, NotifyEmail, NotifySms, SendEmail, SendSms, Step
from models.frequency_caps import Capping, Channel, FrequencyCap

CHANNELS: tuple[Channel, ...] = get_args(Channel)


class RateLimits(BaseModel):
    """Messages per second handed to each channel's provider, cluster-wide; unset: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: float | None = Field(default=None, gt=0, le=10_000, description="SMTP messages/s")
    sms: float | None = Field(default=None, gt=0, le=10_000, description="SMS API requests/s")

    def of(self, channel: Channel) -> float | None:
        return self.email if channel == "email" else self.sms


class SendingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frequency_caps: list[FrequencyCap] = Field(default=[], max_length=20)
    rate_limits: RateLimits = RateLimits()

    def caps(self, channel: str) -> list[FrequencyCap]:
        return [cap for cap in self.frequency_caps if cap.channel == channel]


NO_SENDING_SETTINGS = SendingSettings()


def is_sending_settings(document: object) -> bool:
    """Whether a JSON document is the sending settings rather than a flow."""
    return (
        isinstance(document, dict)
        and "steps" not in document
        and bool({"frequency_caps", "rate_limits"} & document.keys())
    )


def load_sending_settings(path: Path | None) -> SendingSettings:
    """The document at ``path`` (None: no caps, no limits); raises ``ValueError`` (pydantic's
    ``ValidationError`` among them) on one that is not valid, so a worker does not start."""
    if path is None:
        return NO_SENDING_SETTINGS
    return SendingSettings.model_validate(json.loads(path.read_text(encoding="utf-8")))


def channel_task_queue(task_queue: str, channel: Channel) -> str:
    """The task queue a channel's sends go to, beside the participants' own."""
    return f"{task_queue}-{channel}"


def step_channel(step: SendEmail | SendSms | NotifyEmail | NotifySms) -> Channel:
    return "email" if isinstance(step, SendEmail | NotifyEmail) else "sms"


def capping_for(flow: Flow, step: Step, at: datetime) -> Capping | None:
    """What a message step's send, decided at ``at``, asks of the caps: None for messages the
    caps never hold back (transactional messages, notifications to our own people, any step
    that is not a send)."""
    if not isinstance(step, SendEmail | SendSms) or step.transactional:
        return None
    return Capping(when_capped=flow.when_capped, time_zone=flow.time_zone, at=at)
