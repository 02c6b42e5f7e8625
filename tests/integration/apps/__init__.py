"""Small aqueue apps that tests run in ``aqueue worker`` subprocesses.

Each module builds its TaskQueue from environment variables at import time:

- ``AQUEUE_TEST_URL``: the broker URL (default: the shared local broker);
- ``AQUEUE_TEST_PREFIX``: the topology prefix (each test has its own);
- ``AQUEUE_TEST_OUT``: the file tasks append their records to;
- ``AQUEUE_TEST_CONNECT_TIMEOUT``: seconds to wait for the broker (default 10).

Tasks record what they did as one line ``<event> <job id>`` per ``write`` on a file opened in
append mode, so records of several processes (a killed worker, its replacement) interleave
without tearing, and a record written before a kill survives it.
"""
