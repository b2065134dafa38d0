"""The tracking service: where clicks, opens, form submissions and outside CRM changes come in.

``tracking.app.create_app`` builds the ASGI app; ``python -m tracking`` serves it (uvicorn).
"""
