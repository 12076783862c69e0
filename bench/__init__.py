"""jobcast's benchmarks: ``make bench``, or ``python -m bench [--quick] [--only NAME]``.

The runner starts jobcast and reference servers of its own (``bench/apps``) as uvicorn
subprocesses on loopback ports, drives every scenario against all of them with a load client
of its own (``client.py``, ``subscribers.py``), prints one table with targets, and writes
``docs/bench.json`` and ``docs/bench.png``. The ``cluster`` scenario also starts a
``redis-server`` and a ``jobcast worker`` of its own (``cluster.py``).
"""
