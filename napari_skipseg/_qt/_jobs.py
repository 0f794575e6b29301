"""Helpers for the generator jobs the widgets run in napari's ``thread_worker``."""

from __future__ import annotations

import functools


class JobError(Exception):
    """An error raised inside a worker job, handed on to the widget's ``errored`` handler.

    superqt's ``GeneratorWorker`` takes any ``RuntimeError`` escaping a job for a sign that
    its Qt object was deleted: it only warns, and emits neither ``errored`` nor
    ``finished``, so the widget would wait for the job forever. Our ``ModelLoadError`` is a
    ``RuntimeError``, and so are many torch errors (CUDA out of memory, ...); :func:`job`
    re-raises them as this type instead.
    """


def job(gen_func):
    """Decorate a generator job so that every error reaches ``worker.errored``."""

    @functools.wraps(gen_func)
    def wrapper(*args, **kwargs):
        try:
            return (yield from gen_func(*args, **kwargs))
        except RuntimeError as err:
            raise JobError(str(err) or type(err).__name__) from err

    return wrapper


class Cancelled(Exception):  # noqa: N818 - it is not an error: the user asked for it
    """Raised inside a job when the user cancelled it; the job undoes what it did."""


#: What a cancelled job returns (so the widget can tell it from a result).
CANCELLED = object()


def cancellable(gen, cancel_event):
    """``yield from gen``, raising :class:`Cancelled` as soon as ``cancel_event`` is set.

    The event is checked before ``gen`` resumes and after each event it yields; on cancel
    ``gen`` is closed first (its ``finally`` blocks run: accelerator memory is released).
    """
    try:
        while True:
            if cancel_event.is_set():
                raise Cancelled
            try:
                event = next(gen)
            except StopIteration as done:
                return done.value
            if cancel_event.is_set():
                raise Cancelled
            yield event
    finally:
        gen.close()


def warm_up() -> None:
    """Called when a widget opens: start loading torch off the GUI thread
    (:mod:`napari_skipseg._preload`).

    Nothing else in the process is changed. (Before 0.2 this also memoised vispy's GLSL
    signature parser for every plugin in the process; with napari 0.9 and vispy 0.17 that
    parser is 2 % of the time a new Labels layer takes, 0.15 s of 7.3 s over 12 layers under
    cProfile, ``benchmarks/bench_labels_layer.py --profile``, so the patch was dropped.)
    """
    from .._preload import preload_torch

    preload_torch()
