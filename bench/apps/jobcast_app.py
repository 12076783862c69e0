"""jobcast as the benchmarks serve it: the demo tasks, plus a thread-mode copy of ``crunch``.

``crunch`` runs in a worker process at lower priority; ``crunch_thread`` is the very same
function registered in thread mode, to show what the process mode saves the API from. Settings
are the defaults a user gets (the SQLite store, in the file ``JOBCAST_DB`` names).
"""

from __future__ import annotations

from jobcast import JobCast
from jobcast.demo import crunch, sleep, ticker

jobs = JobCast()
jobs.task(ticker)
jobs.task(sleep)
jobs.task(mode="process")(crunch)
jobs.task(
    name="crunch_thread",
    description="The crunch loop in a thread: it holds the GIL while the API answers.",
)(crunch)

app = jobs.create_app()
