"""Where and at what precision models run: device selection, the forward's autocast, and the
full-float32 context that every Gram and the "fp32" forward use.

Imports torch: import this module inside the functions that run models, not at the top of modules
that the torch-free processes (config validation, job submission, waiting) import.
"""
from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["device", "autocast", "full_fp32"]


def device(name: str) -> torch.device:
    """The torch device a config's ``device`` names: "auto" (CUDA when visible, else CPU), "cpu", "cuda", "cuda:N".

    Raises RuntimeError when a CUDA device is asked for and none is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config key device: '{name}' requested but no CUDA device is visible on {os.uname().nodename}")
    return torch.device(name)


def autocast(device, precision: str):
    """The forward's precision: bf16 / fp16 autocast, or float32 at full precision for "fp32"."""
    if precision == "fp32":
        return full_fp32()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and precision == "fp16":
        # CPU autocast supports fp16 only in recent torch builds; bf16 is the CPU mixed type.
        dtype = torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def full_fp32():
    """Float32 arithmetic at full float32 precision, whatever a caller set: TF32 matmuls, cuDNN's
    TF32 convolutions (on by default on Ampere and later), and an enclosing autocast (a forward hook
    runs inside the forward's mixed precision), which would turn ``a @ b`` into a bf16 / fp16
    product (``mm(out=)`` ignores it, ``@`` does not). Used by every Gram and by the "fp32" forward."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.amp.is_autocast_available(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(matmul)
            torch.backends.cudnn.allow_tf32 = cudnn
