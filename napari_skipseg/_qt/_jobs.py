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
