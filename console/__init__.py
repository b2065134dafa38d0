"""The flows console: the marketer's web window into flows (``python -m console``, ``make run``).

- ``web``          — settings, who is signed in, the CSRF check, templates
- ``accounts``     — sign-in and sign-out, the admins' page of users
- ``flows``        — the flows list, a flow's page and its lifecycle buttons, versions, dry run
- ``editor``       — the step editor's page, its live check and its save
- ``participants`` — a flow's participants, one participant, the dev stack's outbox
- ``app``          — the routes
"""
