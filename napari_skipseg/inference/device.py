"""Choosing the compute device and the precision that is fast on it."""

from __future__ import annotations

DEVICES = ("auto", "cuda", "mps", "cpu")


def select_device(preference: str = "auto") -> str:
    """``"cuda"`` if available, then ``"mps"``, then ``"cpu"``; or the one asked for.

    Asking for a device that is not present raises ``ValueError`` naming what is.
    """
    import torch

    available = available_devices()
    if preference in (None, "", "auto"):
        return available[0]
    pref = str(preference).lower()
    base = pref.split(":")[0]
    if base not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(DEVICES)}")
    if base not in available:
        raise ValueError(f"device {preference!r} is not available here (available: {', '.join(available)})")
    if base == "cuda" and ":" in pref and int(pref.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"{preference!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return pref


def available_devices() -> list[str]:
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def autocast_dtype(device: str):
    """Mixed precision dtype for ``device``, or None for full float32.

    bf16 on CUDA cards that support it, fp16 on older CUDA cards; float32 on CPU and MPS
    (bf16 on CPUs without bf16 units is many times slower than fp32).
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def describe(device: str) -> str:
    """Human-readable device name, e.g. ``cuda (NVIDIA H100, bf16)`` or ``cpu (2 threads)``."""
    import torch

    if device.startswith("cuda"):
        dt = autocast_dtype(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, {str(dt).split('.')[-1]})"
    if device == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, float32)"
    return device


def release(device: str) -> None:
    """Give cached accelerator memory back after a job."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
