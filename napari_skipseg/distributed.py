"""Segmenting on a dask.distributed cluster: many files, or one stack split into chunks.

``skipseg segment ... --scheduler tcp://HOST:8786`` (or ``--workers N`` for a cluster of N
local processes) drives :func:`segment_jobs`:

- a job whose output is a zarr store (``-o out.zarr``, or labels written into the input
  OME-Zarr) is **split by chunk**: the client creates the output store, and every task
  predicts a run of units (slices, or 3D blocks) and writes them into it. Units line up with
  the store's chunks, so no two tasks write the same chunk. Each unit is predicted from the
  tiles of the whole image's grid that touch it (with their overlap), and every task uses the
  normalisation range the client computed once, so the result equals a single-process run.
  Instance ids are made unique afterwards with a second pass that adds each task's offset;
- any other job (``.tif``, ``.nii``, ``.nii.gz`` outputs) is **one task per file**: the
  worker reads the file and writes its output itself.

Workers load the model once (a per-process cache keyed by the model folder and its
modification time) and need to see the input files, the output folder and the model folder
at the same paths as the client (a shared file system). No Qt, napari or torch import at
module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .batch import (
    BatchError,
    FileJob,
    arrange_source,
    create_target,
    open_source,
    output_suffix,
    result_meta,
)

#: per worker process: (model folder, mtime) -> loaded model
_MODELS: dict[tuple[str, float], Any] = {}


def worker_model(model_ref: str):
    """The model at `model_ref`, loaded once per worker process."""
    from .model.store import load_model, resolve_model

    folder = str(resolve_model(model_ref))
    weights = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors")]
    key = (folder, max((os.path.getmtime(w) for w in weights), default=0.0))
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time per worker
        _MODELS[key] = load_model(folder)
    return _MODELS[key]


#: seconds a scheduler has to accept a connection and answer dask's handshake
CONNECT_TIMEOUT = 10.0


def connect(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
            timeout: float = CONNECT_TIMEOUT):
    """A dask client: to the scheduler at `scheduler`, or to a new local cluster of
    `workers` processes. Returns ``(client, cluster)``; close both (cluster may be None).

    Connecting to `scheduler` is bounded in time: a TCP address is first probed (a plain
    socket, then dask's handshake, each within `timeout` seconds), and the client itself
    must be up within ``2 * timeout + 10`` seconds; otherwise :class:`BatchError` says so
    in one line. (dask's own ``Client(timeout=...)`` waits forever on an address that
    accepts connections and never answers.)
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover
        raise ImportError("running on a cluster needs dask.distributed: "
                          "pip install 'napari-skipseg[formats]'") from err
    if scheduler:
        _probe_scheduler(scheduler, timeout)
        client = _within(lambda: Client(scheduler, timeout=f"{timeout:g}s"), 2 * timeout + 10,
                         f"{scheduler}: the dask scheduler did not take the client within "
                         f"{2 * timeout + 10:g} s")
        return client, None
    cluster = LocalCluster(n_workers=max(int(workers or 1), 1), threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=":0")
    return Client(cluster), cluster


def _within(make, seconds: float, message: str):
    """``make()`` run in a daemon thread, given `seconds`; its error re-raised (an OSError
    or dask's TimeoutError as :class:`BatchError`), or BatchError(`message`) past the time."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = make()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name="skipseg-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise BatchError(message)
    err = box.get("error")
    if isinstance(err, OSError):  # TimeoutError too
        detail = " ".join(str(err).split())
        raise BatchError(f"{message}{f' ({detail})' if detail else ''}") from err
    if err is not None:
        raise err
    return box["value"]


def _probe_scheduler(address: str, timeout: float) -> None:
    """Raise :class:`BatchError` unless the TCP scheduler at `address` accepts a connection
    and answers dask's handshake within `timeout` seconds each (other protocols: nothing
    checked here)."""
    import asyncio
    import socket

    from distributed.comm import connect as comm_connect
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address, strict=False)
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as err:
        raise BatchError(f"{address}: not a dask scheduler address (e.g. tcp://10.0.0.5:8786): {err}") from err
    if scheme != "tcp":
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise BatchError(f"{address}: cannot reach the dask scheduler ({why})") from err

    async def handshake() -> None:
        comm = await asyncio.wait_for(comm_connect(f"tcp://{loc}", timeout=timeout), timeout)
        await comm.close()

    _within(lambda: asyncio.run(handshake()), timeout + 5,
            f"{address}: the dask scheduler did not answer within {timeout:g} s")


def _chunked(job: FileJob) -> bool:
    return bool(job.labels_name) or output_suffix(job.dst) == ".zarr"


def segment_jobs(jobs: Sequence[FileJob], model_ref: str, options: dict, client, *, overwrite: bool = False,
                 tasks_per_worker: int = 4, progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Segment every job on the cluster behind `client`; returns one summary per job.

    Parameters
    ----------
    jobs : sequence of FileJob
    model_ref : str
        A model name or folder; resolved here to a folder that the workers must see.
    options : dict
        ``predict`` options and ``channel`` (as for :func:`napari_skipseg.batch.segment_file`).
    client : distributed.Client
    tasks_per_worker : int
        Chunked jobs are cut into about this many tasks per worker.
    progress : callable, optional
        ``progress(done, total, message)`` as tasks finish.
    """
    from distributed import as_completed

    from .model.store import load_config, resolve_model

    model_ref = str(resolve_model(model_ref))
    cfg = load_config(model_ref)
    n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
    summaries: list[dict | None] = [None] * len(jobs)
    pending = []  # (future, job index, kind, payload)
    chunked = {}
    for j, job in enumerate(jobs):
        if _chunked(job):
            chunked[j] = _start_chunked(job, cfg, model_ref, options, client, overwrite,
                                        n_workers * tasks_per_worker)
            pending += [(f, j, "units", g) for f, g in chunked[j]["futures"]]
        else:
            if Path(job.dst).exists() and not overwrite:
                raise BatchError(f"{job.dst}: exists; pass --overwrite to replace it")
            fut = client.submit(_run_file, job, model_ref, options, overwrite, pure=False)
            pending.append((fut, j, "file", None))
    total, done = len(pending), 0
    by_future = {f: (j, kind, g) for f, j, kind, g in pending}
    try:
        for fut in as_completed([p[0] for p in pending]):
            j, kind, g = by_future[fut]
            value = fut.result()
            if kind == "file":
                summaries[j] = value
            else:
                chunked[j]["counts"][g] = value
            done += 1
            if progress is not None:
                progress(done, total, Path(jobs[j].src).name)
        for j, state in chunked.items():
            summaries[j] = _finish_chunked(jobs[j], state, client)
    except BaseException:
        for state in chunked.values():
            state["target"].abort()
        raise
    return summaries  # type: ignore[return-value]


def _start_chunked(job: FileJob, cfg, model_ref: str, options: dict, client, overwrite: bool, n_tasks: int) -> dict:
    import numpy as np

    from .inference.engine import image_intensity_range, plan

    opts = dict(options)
    channel = opts.pop("channel", None)
    opts.pop("link", None)  # refused before: linking frames runs on one machine
    size = {k: opts.pop(k) for k in ("diameter", "spacing", "unit") if k in opts}
    arranged = arrange_source(job.src, channel, cfg, opts.get("mode", "auto"))
    image, meta, channel_axis = arranged.image, arranged.meta, arranged.channel_axis
    if size.get("spacing") is None:  # as segment_file: the file's own pixel size
        size["spacing"], size["unit"] = arranged.spatial_spacing, meta.unit
    if any(size.get(k) is not None for k in ("diameter", "spacing")):
        # resolved once here (a diameter 'auto' estimated once), then the same zoom for every task
        from .inference.engine import resolve_run_scale
        from .model.store import load_model

        choice = resolve_run_scale(load_model(model_ref), image, channel_axis=channel_axis,
                                   mode=opts.get("mode", "auto"), **size)
        if not choice.identity:
            opts["scale"] = choice.scale
    output = opts.get("output", "instances")
    geo = plan(cfg, tuple(image.shape), channel_axis=channel_axis, mode=opts.get("mode", "auto"),
               tile=opts.get("tile"), block=opts.get("block"), overlap=opts.get("overlap", 0.125),
               scale=opts.get("scale"))
    if output == "probabilities":
        shape, dtype, chunks = (cfg.num_classes, *geo["shape"]), np.float32, (1, *geo["chunks"])
    else:
        shape, dtype, chunks = geo["shape"], np.uint32 if output == "instances" else np.uint8, geo["chunks"]
    lo_hi = image_intensity_range(cfg, image, channel_axis)
    target = create_target(job, shape, dtype, result_meta(meta, output), chunks, overwrite,
                           label=output != "probabilities",
                           class_names=list(cfg.class_names or []) if output == "semantic" else None)
    array_path = os.path.join(target.tmp, "0")
    n = len(geo["units"])
    size = max(1, -(-n // max(n_tasks, 1)))
    groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    futures = [
        (client.submit(_run_units, str(job.src), channel, model_ref, opts, g, lo_hi, array_path, pure=False), k)
        for k, g in enumerate(groups)
    ]
    return {"target": target, "groups": groups, "futures": futures, "counts": [None] * len(groups),
            "units": geo["units"], "array_path": array_path, "output": output, "shape": shape,
            "model": cfg.name}


def _finish_chunked(job: FileJob, state: dict, client) -> dict:
    objects = None
    if state["output"] == "instances":
        offset, shifts = 0, []
        for g, counts in zip(state["groups"], state["counts"], strict=True):
            if offset:
                shifts.append(client.submit(_shift_labels, state["array_path"],
                                            [state["units"][u] for u in g], offset, pure=False))
            offset += sum(counts)
        client.gather(shifts)
        objects = offset
    written = state["target"].commit()
    return {"src": str(job.src), "dst": written, "model": state["model"], "device": "cluster",
            "objects": objects, "shape": tuple(state["shape"]), "tasks": len(state["groups"])}


def _run_units(src: str, channel, model_ref: str, options: dict, units: list[int], lo_hi, array_path: str) -> list[int]:
    """Worker: predict `units` of `src` and write them into the zarr array at `array_path`."""
    import zarr

    from .inference.engine import predict, run

    model = worker_model(model_ref)
    image, _, channel_axis = open_source(src, channel, model.config, options.get("mode", "auto"))
    out = zarr.open_array(array_path, mode="r+")
    key = "probabilities_out" if options.get("output") == "probabilities" else "labels_out"
    result = run(predict(model, image, channel_axis=channel_axis, units=units,
                         intensity_range=lo_hi, **options, **{key: out}))
    return list(result.info["label_counts"])


def _shift_labels(array_path: str, units: list[tuple], offset: int) -> None:
    """Worker: add `offset` to the object ids of `units` in the labels at `array_path`."""
    import zarr

    out = zarr.open_array(array_path, mode="r+")
    for idx, blk in units:
        where = (*idx, *blk)
        lab = out[where]
        lab[lab > 0] += offset
        out[where] = lab


def _run_file(job: FileJob, model_ref: str, options: dict, overwrite: bool) -> dict:
    """Worker: segment one whole file and write its output."""
    from .batch import segment_file

    return segment_file(job, worker_model(model_ref), options, overwrite=overwrite)
