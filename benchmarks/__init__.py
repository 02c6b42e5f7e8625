"""aqueue against raw aio-pika, on the same broker, in one run.

``python -m benchmarks`` runs every scenario for both sides, interleaved, and prints a markdown
table of both figures and the ratio aqueue/raw. See ``docs/benchmarks.md``.
"""
