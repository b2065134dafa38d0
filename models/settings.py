"""Every setting the product reads from its environment, in one typed object read once.

Each field is the environment variable of the same name in capitals (``smtp_port`` is
``SMTP_PORT``); an empty variable counts as unset. ``get_settings()`` reads them on first use;
code that changes the environment afterwards (the dev stack, tests) calls
``get_settings.cache_clear()`` so that the next call reads them again. The README's
configuration table lists the same variables (a test compares the two).
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.encryption import Keyring


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    # --- Temporal and the database ---------------------------------------------------------------
    temporal_address: str = Field("localhost:7233", description="the Temporal frontend")
    temporal_namespace: str = Field("default", description="the Temporal namespace")
    task_queue: str = Field("marketing-flows", description="the participants' task queue")
    database_url: str | None = Field(
        None,
        description="the CRM and engine tables (SQLAlchemy URL); "
        "unset: the SQLite file .data/flows.db in the project folder",
    )
    metrics_port: int = Field(
        9464, description="where the worker serves Prometheus metrics (/metrics)"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="the address the metrics listen on (0.0.0.0: every interface)"
    )
    workflow_sandbox: bool = Field(
        False,
        description="true: workflows run in Temporal's sandbox (the tests do); "
        "false: unsandboxed, about a third of the workflow CPU",
    )
    activity_threads: int = Field(
        8, ge=1, description="the worker's threads (and slots) for the participants' activities"
    )

    # --- the Temporal connection's TLS and payload encryption ------------------------------------
    temporal_tls: bool = Field(
        False, description="true: TLS with the system's CAs (implied by any TEMPORAL_TLS_* file)"
    )
    temporal_tls_ca_file: Path | None = Field(
        None, description="CA certificate(s) that sign the server's; unset: the system's"
    )
    temporal_tls_cert_file: Path | None = Field(
        None, description="client certificate for mutual TLS (with TEMPORAL_TLS_KEY_FILE)"
    )
    temporal_tls_key_file: Path | None = Field(None, description="its private key")
    temporal_tls_server_name: str | None = Field(
        None, description="the name the server's certificate carries; unset: the address's host"
    )
    payload_keys: SecretStr | None = Field(
        None,
        description="AES-256 keys that encrypt payloads, 'id:base64key' separated by commas: "
        "the first encrypts, all decrypt; unset: PAYLOAD_KEYS_FILE",
    )
    payload_keys_file: Path | None = Field(
        None,
        description="a file holding PAYLOAD_KEYS; unset: the key make run made "
        "(.data/payload-keys), for its server only; no keys at all: payloads are not encrypted",
    )
    codec_server_token: SecretStr | None = Field(
        None, description="the codec server's bearer token (at least 16 characters)"
    )
    codec_server_host: str = Field("127.0.0.1", description="where python -m codec_server listens")
    codec_server_port: int = Field(8028, description="its port")
    codec_server_origins: str | None = Field(
        None,
        description="Web UI origins allowed to call it, separated by commas; "
        "unset: http://localhost and http://127.0.0.1 at TEMPORAL_UI_PORT",
    )

    # --- email ---------------------------------------------------------------------------------
    smtp_host: str = Field("localhost", description="the SMTP server email is handed to")
    smtp_port: int = Field(8025, description="its port (and the dev stack's inbox's)")
    smtp_starttls: bool = Field(
        False, description="true: require STARTTLS; false: never upgrade the connection"
    )
    smtp_username: str | None = Field(None, description="AUTH user; unset: no AUTH")
    smtp_password: SecretStr | None = Field(None, description="AUTH password")
    smtp_auth_without_tls: bool = Field(
        False,
        description="true: AUTH may go over a connection without TLS (a relay on this host); "
        "false: AUTH needs SMTP_STARTTLS=true, and the worker refuses to start without it",
    )
    smtp_ca_file: str | None = Field(
        None, description="CA bundle to trust (e.g. a self-signed certificate); unset: the system's"
    )
    smtp_timeout: float = Field(30.0, description="seconds an SMTP command may take")
    smtp_envelope_from: str | None = Field(
        None, description="MAIL FROM, where bounces go; unset: the message's From address"
    )
    message_id_domain: str = Field(
        "flows.local", description="the domain of every Message-ID the engine makes"
    )
    list_unsubscribe_url: str | None = Field(
        None,
        description="List-Unsubscribe URL of marketing email and [[link.unsubscribe]]; "
        "{contact_id} and {flow_id} are filled in",
    )
    list_unsubscribe_mailto: str | None = Field(
        None, description="List-Unsubscribe address of marketing email"
    )
    subscription_url: str | None = Field(
        None, description="the subscription centre, [[link.subscription]] ({contact_id}, {flow_id})"
    )
    webversion_url: str | None = Field(
        None,
        description="the web version of an email, [[link.webversion]] ({contact_id}, {flow_id})",
    )
    content_root: Path | None = Field(
        None,
        description="the folder of email content files and attachments; "
        "unset: flows/ in the project folder",
    )

    # --- SMS -----------------------------------------------------------------------------------
    twilio_account_sid: str | None = Field(
        None, description="SMS credentials; without them SMS steps wait and retry"
    )
    twilio_auth_token: SecretStr | None = Field(None, description="SMS credentials")
    twilio_api_base: str | None = Field(
        None, description="any Twilio-compatible Messages API; unset: https://api.twilio.com"
    )
    twilio_timeout: float = Field(30.0, description="seconds a request to Twilio may take")
    sms_default_region: str = Field(
        "SE", description="region for numbers written without a country code"
    )

    # --- sending discipline --------------------------------------------------------------------
    sending_settings_file: Path | None = Field(
        None,
        description="the sending settings document: frequency caps per channel and the "
        "provider rate limits (models/sending.py); unset: no caps, no limits",
    )

    # --- tracking ------------------------------------------------------------------------------
    tracking_base_url: str | None = Field(
        None,
        description="where the tracking service is reached from mail; unset: links go out "
        "untracked (python -m tracking: this service on localhost)",
    )
    tracking_secret: SecretStr | None = Field(
        None, description="signs click/open/form tokens (at least 32 random characters)"
    )
    tracking_token_days: int = Field(365, description="how long a tracked link keeps working")
    tracking_host: str = Field("127.0.0.1", description="where python -m tracking listens")
    tracking_port: int = Field(8027, description="its port")
    tracking_events_token: SecretStr | None = Field(
        None,
        description="bearer token for POST /events (CRM changes from outside, at least 32 "
        "random characters); unset: off",
    )
    tracking_max_body_bytes: int = Field(
        65_536, description="the largest form or POST /events body; larger ones get 413"
    )
    tracking_repeat_seconds: int = Field(
        3_600, description="clicks and opens of one tracked link within this window count once"
    )
    tracking_rate_limit: int = Field(30, description="requests per token and minute; more get 429")

    # --- the flows console -------------------------------------------------------------------
    console_secret: SecretStr | None = Field(
        None,
        description="signs the console's session cookies (at least 32 random characters); "
        "changing it signs everyone out",
    )
    console_host: str = Field("127.0.0.1", description="where python -m console listens")
    console_port: int = Field(8029, description="its port")
    temporal_ui_url: str | None = Field(
        None,
        description="the Temporal Web UI the console links participants to; "
        "unset: http://localhost at TEMPORAL_UI_PORT",
    )

    # --- the dev stack (make run) --------------------------------------------------------------
    temporal_port: int = Field(7233, description="make run: the Temporal dev server's port")
    temporal_ui_port: int = Field(8233, description="make run: the Temporal Web UI's port")
    sms_port: int = Field(8026, description="make run: the local Twilio-compatible endpoint's port")

    @field_validator("smtp_envelope_from", "list_unsubscribe_mailto")
    @classmethod
    def _email_address(cls, value: str | None) -> str | None:
        # Read at start, so a typo stops the process instead of failing every send.
        if value is not None:
            address = value.removeprefix("mailto:").split("?", 1)[0]
            try:
                validate_email(address, check_deliverability=False)
            except EmailNotValidError as error:
                raise ValueError(f"not an email address: {error}") from None
        return value

    @field_validator("list_unsubscribe_url", "subscription_url", "webversion_url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an absolute http:// or https:// URL")
            if any(char.isspace() for char in value):
                raise ValueError("a URL has no spaces or line breaks")
        return value

    @model_validator(mode="after")
    def _payload_and_tls_settings(self) -> Settings:
        if (self.temporal_tls_cert_file is None) != (self.temporal_tls_key_file is None):
            raise ValueError("TEMPORAL_TLS_CERT_FILE and TEMPORAL_TLS_KEY_FILE go together")
        if self.payload_keys is not None:
            Keyring.parse(self.payload_keys.get_secret_value())  # refused at start, not at use
        token = self.codec_server_token
        if token is not None and len(token.get_secret_value()) < 16:
            raise ValueError("CODEC_SERVER_TOKEN must be at least 16 characters")
        return self

    @classmethod
    def variables(cls) -> list[str]:
        """The environment variables, as the README's configuration table names them."""
        return [name.upper() for name in cls.model_fields]


@functools.cache
def get_settings() -> Settings:
    """The settings, read from the environment on first use."""
    return Settings()
