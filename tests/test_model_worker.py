"""ModelWorker: one thread makes every model call; a batch is what queued while it was busy."""

import asyncio
import threading

import pytest

from speech2image.batching import ModelWorker

WAIT_SECONDS = 30  # bounds every wait: a broken worker fails the test instead of hanging it


class Recorder:
    """A ``run_batch`` that records each batch and the thread it ran on, and can be held."""

    def __init__(self, fail_on=None):
        self.batches, self.threads = [], set()
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(WAIT_SECONDS)
        if self.fail_on in items:
            raise RuntimeError(f'batch with {self.fail_on} failed')
        return [ValueError(f'bad {item}') if item == 'bad' else item.upper() for item in items]


def hold_first_batch(worker: ModelWorker, recorder: Recorder, first: str):
    """Submit ``first`` and return once the worker is running it (held until released)."""
    recorder.release.clear()
    recorder.started.clear()
    future = worker.submit(first)
    assert recorder.started.wait(WAIT_SECONDS)
    return future


def test_a_lone_job_runs_at_once_and_later_ones_batch_while_it_runs():
    recorder = Recorder()
    worker = ModelWorker(recorder, max_batch=8, name='model')
    first = hold_first_batch(worker, recorder, 'a')
    assert recorder.batches == [['a']]  # taken alone: nothing waited for company
    later = [worker.submit(item) for item in 'bcd']
    recorder.release.set()
    assert [future.result(WAIT_SECONDS) for future in [first, *later]] == ['A', 'B', 'C', 'D']
    assert recorder.batches == [['a'], ['b', 'c', 'd']]
    assert recorder.threads == {'model'}
    worker.close()


def test_batches_hold_one_key_and_at_most_max_batch():
    recorder = Recorder()
    worker = ModelWorker(recorder, max_batch=3, name='model')
    first = hold_first_batch(worker, recorder, 'a')
    jobs = [('b', 'x', 1), ('c', 'y', 1), ('d', 'x', 2), ('e', 'x', 1), ('f', 'y', 1)]
    futures = [worker.submit(item, key, size) for item, key, size in jobs]
    recorder.release.set()
    for future in [first, *futures]:
        future.result(WAIT_SECONDS)
    # After 'a': the oldest ('b', key x) with what fits beside it (size 1 + 2 = 3), in order;
    # then key y; then what was left of key x.
    assert recorder.batches == [['a'], ['b', 'd'], ['c', 'f'], ['e']]
    worker.close()


def test_errors_reach_their_own_callers():
    recorder = Recorder(fail_on='boom')
    worker = ModelWorker(recorder, max_batch=8, name='model')
    first = hold_first_batch(worker, recorder, 'a')
    good, bad = worker.submit('good'), worker.submit('bad')
    recorder.release.set()
    first.result(WAIT_SECONDS)
    assert good.result(WAIT_SECONDS) == 'GOOD'
    with pytest.raises(ValueError, match='bad bad'):
        bad.result(WAIT_SECONDS)
    # An exception from the whole call fails every job of its batch, and the worker goes on.
    first = hold_first_batch(worker, recorder, 'a')
    failed = [worker.submit('boom'), worker.submit('c')]
    recorder.release.set()
    for future in failed:
        with pytest.raises(RuntimeError, match='batch with boom failed'):
            future.result(WAIT_SECONDS)
    assert worker.submit('d').result(WAIT_SECONDS) == 'D'
    worker.close()


def test_a_cancelled_job_is_not_run():
    recorder = Recorder()
    worker = ModelWorker(recorder, max_batch=8, name='model')
    first = hold_first_batch(worker, recorder, 'a')
    cancelled, kept = worker.submit('b'), worker.submit('c')
    assert cancelled.cancel()
    recorder.release.set()
    assert kept.result(WAIT_SECONDS) == 'C'
    assert recorder.batches == [['a'], ['c']]
    first.result(WAIT_SECONDS)
    worker.close()


def test_coroutines_await_results_and_calls_share_the_thread():
    recorder = Recorder()
    started_on = []
    worker = ModelWorker(
        recorder,
        max_batch=8,
        name='model',
        on_start=lambda: started_on.append(threading.current_thread().name),
    )
    assert worker.call(lambda: threading.current_thread().name) == 'model'

    async def many():
        return await asyncio.gather(*(worker.run(item) for item in 'xyz'))

    assert asyncio.run(many()) == ['X', 'Y', 'Z']
    assert started_on == ['model'] and recorder.threads == {'model'}
    worker.close()
    with pytest.raises(RuntimeError, match='closed'):
        worker.submit('late')
