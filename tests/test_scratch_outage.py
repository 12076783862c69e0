from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from tests.test_cluster import TERMINAL, Cluster, cluster, redis_server, feed, is_, start_job, HEARTBEAT  # noqa

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("i", range(8))
async def test_outage(cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path, i: int) -> None:
    (a,), (w,) = cluster.start(apis=1, workers=1)
    gate = tmp_path / "gate"
    async with feed(client, a) as on_a:
        running = await start_job(client, a, "await_file", path=str(gate))
        await on_a.wait(is_(running["id"], "log"))
        cluster.redis.stop()
        await anyio.sleep(2 * HEARTBEAT)
        cluster.redis.start()
        gate.touch()
        ended = await on_a.wait(is_(running["id"], *TERMINAL))
    print("END", ended.event, "self-reaped" if "taken back" in w.output() else "")
