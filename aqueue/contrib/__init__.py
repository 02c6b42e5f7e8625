"""Integrations with frameworks and databases, each behind its own extra.

- `aqueue.contrib.fastapi`: the lifespan and the ``Depends`` dependency (``[fastapi]``).
- `aqueue.contrib.sqlalchemy`: the transactional outbox on PostgreSQL (``[sqlalchemy]``).
- `aqueue.contrib.django`: the ``django.tasks`` backend, the Django outbox and
  ``enqueue_on_commit`` (``[django]``).
- `aqueue.contrib.outbox`: the outbox's row and relay, whatever the database library.

Each third-party library enters in its one module; importing ``aqueue`` imports none of them.
"""
