"""A process job's outcome on its way back to the pool's owner, with the job's timings, unchanged for the user.

Why this module exists: the job's timings travel back with its outcome without changing what the pool
delivers. The result is wrapped in an :class:`Envelope` whose ``__reduce__`` unpickles, in the owner, into
the user's own value (logging the timings as a side effect, :func:`deliver`); an exception gets an
instance-level ``__reduce_ex__`` that does the same for it (:func:`tag_exception`). Nothing of otel-perf
reaches the user's future or ``AsyncResult``.

A ``ProcessPoolExecutor`` worker reduces the result item carrying its envelope to ``_result_item(...)``:
one pickled global reference and a tuple, where the stdlib's item pickles a class reference and a state
dictionary and ours would add :func:`deliver` to them; it unpickles into the very item the stdlib sends.
Every other item pickles the stdlib's way (the reducer is registered for one envelope at a time). The
call items going out are made compact the same way (``_workers_trampoline``).
"""

from __future__ import annotations

import pickle
import sys
import weakref
from typing import Any

from otel_perf.instrumentations import _workers_carrier
from otel_perf.instrumentations._workers_joblog import FOLD_AT, Entry
from otel_perf.instrumentations._workers_sources import SOURCE_MP
from otel_perf.instrumentations._workers_state import fault, states_by_id

__all__ = ["ChunkEnvelope", "Envelope", "Meta", "deliver", "deliver_chunk", "reduce_result_item",
           "tag_exception", "use_compact_results"]

#: A finished process job on its way back: (owner pid, pool id, entry). Unpacked into :func:`deliver`'s
#: arguments, never indexed.
Meta = tuple[int, int, Entry]


#: Envelopes of jobs that may run in a chunk, made in this worker and not yet sent. A chunk (``map`` with
#: ``chunksize > 1``) returns its results as one list, and an item failing discards the list of the items
#: before it, which did run: their timings then travel with the failing item's exception instead.
#: Held weakly: an envelope whose sending failed (an unpicklable result) just disappears. Jobs submitted
#: one by one (``ProcessPoolExecutor.submit``) never enter it (about 1 µs a job).
_unsent: weakref.WeakValueDictionary[int, ChunkEnvelope] = weakref.WeakValueDictionary()


#: ``concurrent.futures.process._ResultItem`` in this process, once a compact result was unpickled here.
_result_item_type: Any = None


def _result_item(work_id: int, value: Any, owner: int, pool_id: int, entry: Entry, exit_pid: int | None) -> Any:
    """In the owner, unpickling a compact result item: the job's timings logged (:func:`deliver`), the
    item the pool expects, with the job's own result."""
    global _result_item_type
    item_type = _result_item_type
    if item_type is None:
        from concurrent.futures.process import _ResultItem as item_type

        _result_item_type = item_type
    item = item_type(work_id, None, deliver(value, owner, pool_id, entry))
    if exit_pid is not None:  # Python 3.11+: the worker leaves after this job (max_tasks_per_child)
        item.exit_pid = exit_pid
    return item


#: In a ``ProcessPoolExecutor`` worker: (``ForkingPickler``'s registered reducers, ``_ResultItem``). The
#: trampoline registers :func:`reduce_result_item` there for the result item of each job it ran.
compact_results: tuple[dict[Any, Any], Any] | None = None


def use_compact_results() -> None:
    """Once per worker process: envelopes pickle without a Python call, and a ``ProcessPoolExecutor``'s
    result items carrying one go back compact (:func:`reduce_result_item`)."""
    global compact_results
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(Envelope, tuple)
    process_pools = sys.modules.get("concurrent.futures.process")
    if process_pools is not None:
        compact_results = (ForkingPickler._extra_reducers, process_pools._ResultItem)  # type: ignore[attr-defined]


def reduce_result_item(item: Any) -> Any:
    """``ForkingPickler``'s reduction of a ``ProcessPoolExecutor`` result item, in a worker process.

    The result of a job of ours (an :class:`Envelope`) goes back as ``_result_item(work id, value, owner
    pid, pool id, entry, exit pid)``: one pickled global instead of two (the ``_ResultItem`` class and
    ``deliver``) and no state dictionary, as ``_workers_trampoline`` does with call items. The trampoline
    registers this reducer for the one result item its envelope goes into, and it removes itself when
    called: any other result item pickles the stdlib's way, with no call of ours.
    """
    try:
        compact = compact_results
        if compact is not None and compact[0].get(compact[1]) is reduce_result_item:
            del compact[0][compact[1]]
        result = item.result
        if type(result) is Envelope and item.exception is None:
            value, owner, pool_id, entry = result[1]
            return (_result_item, (item.work_id, value, owner, pool_id, entry, getattr(item, "exit_pid", None)))
    except Exception as exc:
        fault("pickling a pool job's result", exc)
    return item.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def deliver(value: Any, owner: int, pool_id: int, entry: Entry) -> Any:
    """In the owner, unpickling a job's envelope: log the job's timings into its pool (see ``PoolState``)
    and give back the job's own result."""
    try:
        if owner == _workers_carrier.my_pid:
            ref = states_by_id.get(pool_id)
            state = ref() if ref is not None else None
            if state is not None:
                done = state.done
                done.append(entry)
                if len(done) >= FOLD_AT:
                    state.fold(False)
                if state.source == SOURCE_MP:
                    state.add_outstanding(-1)
    except Exception as exc:
        fault("recording a process job", exc)
    return value


def deliver_chunk(value: Any, owner: int, pool_id: int, wait: float, run: float, items: int) -> Any:
    """In the owner, unpickling the envelope of a chunk timed as one (``_workers_trampoline.chunk_job``):
    log its ``items`` jobs, each with the chunk's wait and ``run`` seconds, and give back the chunk's list."""
    try:
        if owner == _workers_carrier.my_pid:
            ref = states_by_id.get(pool_id)
            state = ref() if ref is not None else None
            if state is not None:
                chunks = state.log.chunks
                chunks.append((wait, run, items))
                if len(chunks) >= FOLD_AT:
                    state.fold(False)
                if state.source == SOURCE_MP:
                    state.add_outstanding(-items)
    except Exception as exc:
        fault("recording a chunk of process jobs", exc)
    return value


class Envelope(tuple):  # type: ignore[type-arg]
    """A job's result with its timings; unpickles into the bare result (see the module docstring).

    It is its own reduction, ``(deliver, (value, owner, pool id, entry))``: a tuple made in C, with no ``__init__`` to
    run, and a worker registers ``tuple`` as its reducer with ``ForkingPickler``
    (``_workers_bootstrap.ensure_worker_sdk``), so pickling it runs no Python code either (``__reduce__`` stays for any
    other pickler). Each Python call saved is about 1% of a no-op process round trip (group
    ``workers.process.roundtrip.paired``): the worker runs it with cold caches.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return repr(self[1][0])


class ChunkEnvelope:
    """The envelope of a job that may run as an item of a chunk: known to ``_unsent`` until it is sent."""

    __slots__ = ("__weakref__", "meta", "value")

    def __init__(self, value: Any, meta: Meta) -> None:
        self.value = value
        self.meta = meta
        _unsent[id(self)] = self

    def __reduce__(self) -> tuple[Any, ...]:
        _unsent.pop(id(self), None)
        return (deliver, (self.value, *self.meta))

    def __repr__(self) -> str:
        # multiprocessing.pool puts repr(result) into MaybeEncodingError when a result does not pickle.
        return repr(self.value)


class _ReduceWithMeta:
    """Instance-level ``__reduce_ex__`` of a job's exception: the exception's own reduction, plus meta."""

    __slots__ = ("exc", "metas")

    def __init__(self, exc: BaseException, metas: list[Meta]) -> None:
        self.exc = exc
        self.metas = metas

    def __call__(self, protocol: int) -> Any:
        exc = self.exc
        exc.__dict__.pop("__reduce_ex__", None)  # one shot, and never part of the pickled state
        reduced = type(exc).__reduce_ex__(exc, protocol)
        if not isinstance(reduced, tuple):
            return reduced
        return (_rebuild_exception, (reduced, self.metas))


def tag_exception(exc: BaseException, meta: Meta, ran: list[Meta] | None = None) -> None:
    """Make ``exc`` carry the timings of its job (``meta``), and of the items of its chunk that ran before
    it (``ran``, or those still in ``_unsent``), back to the owner."""
    metas = [meta]
    if ran:
        metas += ran
    if _unsent:  # earlier items of this job's chunk: they ran, their list of results is discarded
        metas.extend(envelope.meta for envelope in list(_unsent.values()))
        _unsent.clear()
    try:
        exc.__dict__["__reduce_ex__"] = _ReduceWithMeta(exc, metas)
    except (AttributeError, TypeError):
        pass  # no instance dict: the timings of this failed job are not carried back


def _rebuild_exception(reduced: tuple[Any, ...], metas: list[Meta]) -> Any:
    """Unpickle an exception exactly as pickle would from its own reduction, and record the meta."""
    func, args = reduced[0], reduced[1]
    obj = func(*args)
    state = reduced[2] if len(reduced) > 2 else None
    if state is not None:
        setstate = getattr(obj, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            slotstate = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slotstate = state
            if state:
                obj.__dict__.update(state)
            if slotstate:
                for key, value in slotstate.items():
                    setattr(obj, key, value)
    if len(reduced) > 3 and reduced[3] is not None:
        for item in reduced[3]:
            obj.append(item)
    if len(reduced) > 4 and reduced[4] is not None:
        for key, value in reduced[4]:
            obj[key] = value
    for meta in metas:
        deliver(None, *meta)
    return obj
