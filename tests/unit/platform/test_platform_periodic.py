from __future__ import annotations

import asyncio
import logging

import pytest

from pi.platform.runtime.server import periodic


async def test_a_periodic_job_runs_every_interval_and_survives_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("boom")

    task = asyncio.create_task(periodic(0.01, job, name="test housekeeping")())
    with caplog.at_level(logging.ERROR):
        while len(runs) < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "test housekeeping failed" in caplog.text


async def test_a_periodic_job_first_runs_after_one_interval() -> None:
    runs: list[None] = []

    async def job() -> None:
        runs.append(None)

    task = asyncio.create_task(periodic(60, job, name="hourly")())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == []
