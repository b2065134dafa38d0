"""How values travel to and from Temporal: pydantic models as JSON, byte for byte as the SDK's
pydantic converter writes them, with one pydantic converter per process; encrypted on the way
out when the process has payload keys (``models.encryption``).

The SDK builds a payload converter for every workflow instance, and a cached participant keeps
it as long as it stays in the cache. The SDK's pydantic converter caches its type adapters per
converter, so each participant would build, and hold, its own adapters for the same few types
(a few KiB a participant, and the CPU to build them on every start or wake). The pydantic JSON
converter holds no per-run state (no serialization context, a thread-safe cache), so every
instance shares one; the other encodings were already shared.
"""

from __future__ import annotations

import dataclasses

from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

from models.encryption import Keyring, PayloadEncryption

_PYDANTIC_JSON = PydanticJSONPlainPayloadConverter()
_CONVERTERS = tuple(
    _PYDANTIC_JSON if isinstance(converter, JSONPlainPayloadConverter) else converter
    for converter in DefaultPayloadConverter.default_encoding_payload_converters
)


class PayloadConverter(CompositePayloadConverter):
    """The SDK's pydantic payload converter: same encodings, same order, shared JSON one."""

    def __init__(self) -> None:
        super().__init__(*_CONVERTERS)


DATA_CONVERTER = DataConverter(payload_converter_class=PayloadConverter)
"""The data converter without encryption: the test servers', the dry run's and the replayer's
(the recorded histories are not encrypted). Programs connect with ``data_converter``."""


def data_converter(keyring: Keyring | None) -> DataConverter:
    """``DATA_CONVERTER`` encrypting every payload with the keyring, and failures' messages and
    stack traces with them (an error may quote what it was given); without keys, as it is."""
    if keyring is None:
        return DATA_CONVERTER
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=PayloadEncryption(keyring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
