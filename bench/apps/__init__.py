"""The servers the benchmarks start, each as ``uvicorn bench.apps.<module>:app``.

``jobcast_app`` is jobcast with the demo tasks; the others are references written to the
patterns the design measures jobcast against: ``tutorial`` (a queue per client, sse-starlette
encoding per client), ``bare`` (bare ASGI writing pre-encoded bytes) and ``recipe`` (the
original BackgroundTasks recipe with a polled status flag).
"""
