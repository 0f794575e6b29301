"""Long fuzzing run of every reader: thousands of hostile files, each read in a guarded worker.

    python benchmarks/bench_fuzz.py [--count 5000] [--formats tiff zarr nifti dicom]
        [--timeout 30] [--address-space-gb 8] [--cli-sample 3] [--seed 0] [--json OUT]

Files are drawn by the hypothesis strategies of ``tests/hostile.py`` (the same ones
``tests/io/test_fuzz_readers.py`` runs a few dozen of): small real TIFF/OME-TIFF, OME-Zarr
and plain zarr, NIfTI and DICOM files whose metadata lie or whose bytes are cut or garbled.
Each file is read eagerly and lazily (a lazy array is pulled whole up to 256 MB, else its
first 256-pixel corner) in a worker process with an address-space limit (``--address-space-gb``), at
the default read limits (``SKIPSEG_MAX_BYTES`` 64 GiB, eager 16 GiB or half the memory):
bombs must be refused by the checks against the bytes present, not by small limits.

Reported, per format: cases, reads that gave an array, reads refused with ImageReadError
naming the file, other exceptions (tracebacks: goal 0), MemoryError, hangs over
``--timeout`` s (goal 0), worker crashes; the worker's peak RSS (goal < 1.5 GB) and the case
that raised it most. For ``--cli-sample`` refused files per format, ``skipseg segment FILE -o
out.tif`` must exit 2 with one stderr line naming the file. One JSON document at the end
(and in ``--json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
MB = 1 << 20
FULL_PULL = 256 * MB


def _worker(conn, address_space: int) -> None:
    """Read the files sent on `conn`; answer with what happened and the peak RSS."""
    import resource
    import warnings

    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    import numpy as np

    from napari_skipseg.io import ImageReadError, read_image

    while True:
        job = conn.recv()
        if job is None:
            return
        path, lazy = job
        try:
            data, meta = read_image(path, lazy=lazy)
            n = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
            if not lazy or n <= FULL_PULL:
                pixels = np.asarray(data[...])
                assert pixels.shape == tuple(data.shape), "pixels differ from the shape claimed"
            else:  # a corner, as a viewer or the engine would read first
                np.asarray(data[tuple(slice(0, min(int(s), 256)) for s in data.shape)])
            meta.validate(tuple(data.shape))
            outcome, detail = "ok", f"{tuple(data.shape)} {data.dtype} {meta.axes}"
        except ImageReadError as err:
            text = str(err)
            named = text.startswith(str(path)) and "\n" not in text
            outcome, detail = ("refused" if named else "unnamed"), text[:300]
        except MemoryError as err:
            outcome, detail = "memory", repr(err)[:300]
        except Exception:  # noqa: BLE001 - what the bench is looking for
            outcome, detail = "traceback", traceback.format_exc()[-1500:]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send((outcome, detail, rss))


class Pool:
    """One worker process; restarted after a hang or a crash."""

    def __init__(self, address_space: int, timeout: float) -> None:
        self.address_space, self.timeout = address_space, timeout
        self.ctx = mp.get_context("spawn")
        self.peak = 0
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.address_space), daemon=True)
        self.proc.start()

    def read(self, path: str, lazy: bool) -> tuple[str, str, int]:
        self.conn.send((path, lazy))
        t0 = time.monotonic()
        if not self.conn.poll(self.timeout):
            self.proc.kill()
            self.proc.join()
            self._start()
            return "hang", f"no answer after {time.monotonic() - t0:.0f} s", 0
        try:
            outcome, detail, rss = self.conn.recv()
        except EOFError:
            code = self.proc.exitcode
            self.proc.join()
            self._start()
            return "crash", f"worker died (exit code {code})", 0
        self.peak = max(self.peak, rss)
        return outcome, detail, rss

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def run_format(fmt: str, count: int, pool: Pool, keep: Path, seed: int, log) -> dict:
    from hostile import case_strategy, write_case
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    counts: Counter = Counter()
    examples: dict[str, list] = {}
    refused_kept: list[str] = []
    rss_cases: list = []
    state = {"n": 0, "last_rss": 0}

    @hseed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case_strategy(fmt))
    def one(case):
        state["n"] += 1
        with tempfile.TemporaryDirectory(dir=keep) as tmp:
            try:
                path = write_case(case, Path(tmp))
            except Exception:  # noqa: BLE001 - the writer could not make this one
                counts["unwritable"] += 1
                return
            counts["cases"] += 1
            for lazy in (False, True):
                outcome, detail, rss = pool.read(str(path), lazy)
                counts[outcome] += 1
                if rss > state["last_rss"]:
                    rss_cases.append((rss, case, lazy))
                    state["last_rss"] = rss
                if outcome not in ("ok", "refused"):
                    examples.setdefault(outcome, []).append({"case": repr(case), "lazy": lazy, "detail": detail})
                    log(f"  {fmt} {outcome} (lazy={lazy}): {detail.strip().splitlines()[-1][:200]}\n    {case!r}")
            if outcome == "refused" and len(refused_kept) < 50:  # files for the CLI sample
                dest = keep / f"{fmt}-{len(refused_kept)}{''.join(path.suffixes) if path.is_file() else ''}"
                (shutil.copytree if path.is_dir() else shutil.copy)(path, dest)
                refused_kept.append(str(dest))
        if state["n"] % 250 == 0:
            log(f"  {fmt}: {state['n']} cases, {dict(counts)}, worker peak RSS {pool.peak / MB:.0f} MB")

    t0 = time.perf_counter()
    one()
    top = max(rss_cases, key=lambda r: r[0]) if rss_cases else None
    return {"counts": dict(counts), "seconds": round(time.perf_counter() - t0, 1),
            "failures": examples, "refused_files": refused_kept,
            "rss_top_case": None if top is None else {"rss_mb": round(top[0] / MB), "case": repr(top[1]),
                                                      "lazy": top[2]}}


def cli_check(files: list[str], out_dir: Path, timeout: float) -> list[dict]:
    """``skipseg segment FILE -o out.tif`` on each refused file: exit 2, one line naming it."""
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIPSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for f in files:
        out = out_dir / f"out-{Path(f).name.split('.')[0]}.tif"
        try:
            p = subprocess.run([sys.executable, "-m", "napari_skipseg.cli", "segment", f, "-o", str(out)],
                               capture_output=True, text=True, timeout=timeout, env=env)
            lines = [line for line in p.stderr.splitlines() if line.strip()]
            ok = p.returncode == 2 and len(lines) == 1 and f in lines[0]
            results.append({"file": f, "rc": p.returncode, "stderr_lines": len(lines), "ok": ok,
                            "line": (lines[-1] if lines else "")[:300]})
        except subprocess.TimeoutExpired:
            results.append({"file": f, "rc": None, "ok": False, "line": f"timed out after {timeout} s"})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000, help="hostile files in all (split over the formats)")
    ap.add_argument("--formats", nargs="+", default=["tiff", "zarr", "nifti", "dicom"])
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a read counts as a hang")
    ap.add_argument("--address-space-gb", type=float, default=8.0, help="RLIMIT_AS of the reading worker")
    ap.add_argument("--cli-sample", type=int, default=3, help="refused files per format run through the CLI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import logging
    import warnings

    logging.disable(logging.CRITICAL)  # the format libraries complain about every spoilt file we write
    warnings.simplefilter("ignore")

    keep = Path(tempfile.mkdtemp(prefix="bench_fuzz_"))
    pool = Pool(int(args.address_space_gb * (1 << 30)), args.timeout)
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "formats": {}}
    t0 = time.perf_counter()
    try:
        per = max(args.count // len(args.formats), 1)
        for fmt in args.formats:
            log(f"{fmt}: {per} cases")
            report["formats"][fmt] = run_format(fmt, per, pool, keep, args.seed, log)
        report["worker_peak_rss_mb"] = round(pool.peak / MB)
    finally:
        pool.close()
    cli_files = [f for fmt in args.formats for f in report["formats"][fmt]["refused_files"][: args.cli_sample]]
    report["cli"] = cli_check(cli_files, keep, timeout=300)
    for fmt in args.formats:
        report["formats"][fmt].pop("refused_files")
    totals: Counter = Counter()
    for r in report["formats"].values():
        totals.update(r["counts"])
    report["totals"] = dict(totals)
    report["cli_ok"] = f"{sum(c['ok'] for c in report['cli'])}/{len(report['cli'])}"
    report["seconds"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(keep, ignore_errors=True)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    bad = totals["traceback"] + totals["hang"] + totals["crash"] + totals["unnamed"]
    return 1 if bad or report["worker_peak_rss_mb"] >= 1536 else 0


if __name__ == "__main__":
    sys.exit(main())
