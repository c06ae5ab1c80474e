"""Many watchers on one event loop take turns (watch.Turns): when hundreds wake together,
their steps are spread over several turns of the loop instead of holding it for their sum,
and only a few log streams are opened at once."""

from __future__ import annotations

import asyncio
import time

from airflow_provider_raydatallm import watch
from airflow_provider_raydatallm.hooks._connection import config_from_connection
from airflow_provider_raydatallm.hooks._logs_ws import tail_async

STEPS = 400
STEP_CPU = 0.00025  # each watcher's step: 0.25 ms of CPU, 100 ms for all of them


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def _longest_hold(budgeted: bool) -> tuple[float, int]:
    """(CPU seconds the loop's longest turn ran others' steps, as a probe sees it; steps done)."""
    done = 0
    holds: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            cpu = time.thread_time()
            await asyncio.sleep(0)
            holds.append(time.thread_time() - cpu)

    async def watcher() -> None:
        nonlocal done
        await gate.wait()  # every watcher wakes in the same turn, as when one answer wakes them all
        if budgeted:
            await watch.take_turn()
        _busy(STEP_CPU)
        done += 1

    gate = asyncio.Event()
    watchers = [asyncio.create_task(watcher()) for _ in range(STEPS)]
    await asyncio.sleep(0)
    probing = asyncio.create_task(probe())
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*watchers)
    stop.set()
    await probing
    return max(holds), done


def test_watchers_waking_together_are_spread_over_turns_within_the_budget():
    unbudgeted, done = asyncio.run(_longest_hold(budgeted=False))
    assert done == STEPS and unbudgeted > 0.6 * STEPS * STEP_CPU  # the burst this guards against
    budgeted, done = asyncio.run(_longest_hold(budgeted=True))
    assert done == STEPS
    # The budget (5 ms) plus one step and the turns' own bookkeeping; a gross-regression guard.
    assert budgeted < 0.4 * unbudgeted, (budgeted, unbudgeted)


def test_each_event_loop_has_its_own_turns():
    async def turns() -> watch.Turns:
        return watch.Turns.of_running_loop()

    async def main() -> None:
        assert await turns() is await turns()

    asyncio.run(main())
    first = asyncio.run(turns())
    assert first is not asyncio.run(turns())


def test_only_a_few_log_streams_open_at_once_and_each_gets_its_log():
    """A local websocket server counts the handshakes in progress at once."""
    from websockets.asyncio.server import serve

    opening = peak = 0

    async def handler(connection) -> None:
        await connection.send("line one\n")
        await connection.close()

    async def process_request(connection, request):
        nonlocal opening, peak
        opening += 1
        peak = max(peak, opening)
        await asyncio.sleep(0.02)  # a handshake that takes a while to be answered
        opening -= 1

    async def main() -> list[list[str]]:
        async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
            port = server.sockets[0].getsockname()[1]
            config = config_from_connection("127.0.0.1", port, "http", None, {})
            gate = watch.Gate(3)

            async def one(n: int) -> list[str]:
                return [chunk async for chunk in tail_async(config, f"job-{n}", gate)]

            return await asyncio.gather(*(one(n) for n in range(30)))

    logs = asyncio.run(main())
    assert logs == [["line one\n"]] * 30
    assert 1 <= peak <= 3, peak


def test_a_long_backlog_takes_its_steps_in_line_with_the_others():
    """One job's long backlog of log lines (a trigger far behind its saved offset, a drain)
    must not hold back another trigger's step until the whole backlog is written."""

    async def main() -> tuple[float, float, float]:
        started = time.perf_counter()
        emitter_done = other_waited = other_done = 0.0

        async def emitter() -> None:
            nonlocal emitter_done
            for _ in range(2000):  # about 100 ms of steps
                await watch.take_turn()
                _busy(0.00005)
            emitter_done = time.perf_counter() - started

        async def other() -> None:
            nonlocal other_waited, other_done
            await asyncio.sleep(0.01)  # comes while the backlog is being written
            asked = time.perf_counter()
            await watch.take_turn()
            other_waited, other_done = time.perf_counter() - asked, time.perf_counter() - started

        await asyncio.gather(emitter(), other())
        return emitter_done, other_waited, other_done

    emitter_done, other_waited, other_done = asyncio.run(main())
    assert other_done < emitter_done, (other_done, emitter_done)
    assert other_waited < 0.4 * emitter_done, (other_waited, emitter_done)


def test_turns_and_gates_go_with_their_loop():
    """A worker runs each wait in its own asyncio.run: nothing kept per loop keeps it alive."""
    import gc
    import weakref

    loops: list[weakref.ref] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))

        async def one() -> None:
            async with watch.Turns.of_running_loop().connecting:
                await watch.take_turn()
                await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(watch.CONNECTS_AT_ONCE + 4)))

    for _ in range(3):
        asyncio.run(use())
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


def test_the_step_estimate_follows_cheaper_steps_while_everyone_waits():
    """Slow steps (3 ms) wait in line when a burst of cheap ones (20 us) comes: the turns learn
    that steps got cheaper and let many go a turn again, not one a turn."""

    async def main() -> int:
        turns = 0
        stop = asyncio.Event()

        async def count_turns() -> None:
            nonlocal turns
            while not stop.is_set():
                await asyncio.sleep(0)
                turns += 1

        async def slow() -> None:
            for _ in range(6):
                await watch.take_turn()
                _busy(0.003)

        async def cheap() -> None:
            await watch.take_turn()
            _busy(0.00002)

        slows = [asyncio.create_task(slow()) for _ in range(5)]
        await asyncio.sleep(0.02)  # the slow ones are in line now
        counter = asyncio.create_task(count_turns())
        await asyncio.gather(*(cheap() for _ in range(300)))
        stop.set()
        await asyncio.gather(counter, *slows)
        return turns

    assert asyncio.run(main()) < 120  # one a turn would be 300 and more


def test_a_gate_hands_a_slot_on_when_its_holder_or_a_waiter_is_cancelled():
    async def main() -> list[str]:
        gate, got = watch.Gate(1), []

        async def holder(name: str, hold: float) -> None:
            async with gate:
                got.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(holder("first", 0.05))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(holder("cancelled while waiting", 0))
        last = asyncio.create_task(holder("last", 0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        first.cancel()  # the holder cancelled: its slot goes on
        await asyncio.gather(first, waiting, last, return_exceptions=True)
        assert gate.free == 1 and not gate.waiting
        return got

    assert asyncio.run(main()) == ["first", "last"]


def test_a_gate_slot_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next():
    async def main() -> list[str]:
        gate, got = watch.Gate(1), []
        await gate.__aenter__()  # held

        async def waiter(name: str) -> None:
            async with gate:
                got.append(name)

        first = asyncio.create_task(waiter("first"))
        second = asyncio.create_task(waiter("second"))
        await asyncio.sleep(0)
        await gate.__aexit__(None, None, None)  # the slot goes to "first" ...
        first.cancel()  # ... cancelled before it could run
        await asyncio.gather(first, second, return_exceptions=True)
        assert gate.free == 1 and not gate.waiting
        return got

    assert asyncio.run(main()) == ["second"]
