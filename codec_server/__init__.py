"""The codec server: decrypted payloads for the Temporal Web UI and CLI (``codec_server.app``)."""
