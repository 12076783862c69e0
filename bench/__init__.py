"""jobcast's benchmarks: ``make bench``, or ``python -m bench [--quick] [--only NAME]``.

Every scenario runs against jobcast and reference servers of its own (``bench/apps``), each a
uvicorn subprocess on a loopback port, read by a load client of its own (``client.py``).
"""
