"""Reference: the original recipe. One global task object, a ``status: bool``, BackgroundTasks.

``POST /api/background-task`` starts the heavy task after the answer; ``GET`` says whether one
runs. ``HEAVY_KIND=cpu`` makes the task CPU-bound (jobcast's ``crunch`` loop, in the server's
thread pool, holding the GIL), ``sleep`` keeps the article's ``time.sleep``; ``HEAVY_SECONDS``
sets its length.

One field is added for the benchmark only: ``changed_at``, the wall-clock time the flag last
flipped, so a poller can tell how stale its view was. The recipe itself is unchanged.
"""

from __future__ import annotations

import os
import time

from fastapi import BackgroundTasks, FastAPI

KIND = os.environ.get("HEAVY_KIND", "sleep")
SECONDS = float(os.environ.get("HEAVY_SECONDS", "10"))


class HeavyTask:
    status: bool = False
    changed_at: float = 0.0

    def _flip(self, status: bool) -> None:
        self.status = status
        self.changed_at = time.time()

    def __call__(self) -> None:
        try:
            self._flip(True)
            if KIND == "cpu":
                end = time.monotonic() + SECONDS
                while time.monotonic() < end:
                    sum(i * i for i in range(10_000))
            else:
                time.sleep(SECONDS)
        finally:
            self._flip(False)


app = FastAPI()
task = HeavyTask()


@app.get("/api/background-task")
def fetch_background_task() -> dict[str, float | bool]:
    return {"status": task.status, "changed_at": task.changed_at}


@app.post("/api/background-task")
def execute_background_task(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(task)
    return {"message": "ok"}
