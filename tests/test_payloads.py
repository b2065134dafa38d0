"""The data converter writes exactly what the SDK's pydantic converter writes, and every
payload converter the SDK builds (one per workflow instance) shares one set of type adapters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter

from models.engine import ParticipantStatus
from models.participant import ParticipantState, Standing, Visit
from models.payloads import DATA_CONVERTER, PayloadConverter

STATE = ParticipantState(
    participant_id="run-1",
    flow_id="f1",
    flow_version=3,
    contact_id=7,
    status=ParticipantStatus.active,
    current_step="wait",
    enrolled_at=datetime(2026, 11, 30, 4, 0, tzinfo=UTC),
    trail=[Visit(step="wait", entered_at=datetime(2026, 11, 30, 4, 1, tzinfo=UTC))],
    visits={"wait": 1},
)
VALUES: list[Any] = [STATE, Standing(), None, "text", 42, b"\x00raw", {"a": [1, 2]}]


def test_same_payloads_as_the_sdk_pydantic_converter() -> None:
    ours = DATA_CONVERTER.payload_converter.to_payloads(VALUES)
    sdk = pydantic_data_converter.payload_converter.to_payloads(VALUES)
    assert ours == sdk
    back = DATA_CONVERTER.payload_converter.from_payloads(sdk, [type(v) for v in VALUES])
    assert back == VALUES


def test_converters_built_per_workflow_share_their_type_adapters() -> None:
    assert DATA_CONVERTER.payload_converter_class is PayloadConverter
    first, second = PayloadConverter(), PayloadConverter()
    json = first.converters[b"json/plain"]
    assert json is second.converters[b"json/plain"]
    assert first.from_payloads(second.to_payloads([STATE]), [ParticipantState]) == [STATE]
