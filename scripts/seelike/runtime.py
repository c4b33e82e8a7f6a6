"""Where and at what precision models run: device selection, the forward's autocast, the
full-float32 context that every Gram and the "fp32" forward use, and the CPUs a job was given with
the data loader settings that follow from them.

Imports torch: import this module inside the functions that run models, not at the top of modules
that the torch-free processes (config validation, job submission, waiting) import.
"""
from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["device", "autocast", "full_fp32", "gram_matmul", "GRAM_PRECISIONS", "job_cpus", "loader_options",
           "PREFETCH_BATCHES"]


def device(name: str) -> torch.device:
    """The torch device a config's ``device`` names: "auto" (CUDA when visible, else CPU), "cpu", "cuda", "cuda:N".

    Raises RuntimeError when a CUDA device is asked for and none is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config key device: '{name}' requested but no CUDA device is visible on {os.uname().nodename}")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is not None:
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise RuntimeError(f"config key device: '{name}' requested but {count} CUDA device(s) are visible on "
                               f"{os.uname().nodename} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                               f"use 'cuda' or an index below {count}")
        # the current device too: pinned-memory threads and per-device queries (bf16 support) follow it
        torch.cuda.set_device(dev)
    return dev


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


#: The Grams' matmul precisions (config key ``extraction.gram_precision``): "fp32", float32 products
#: at full precision; "tf32", CUDA's TensorFloat-32 (inputs rounded to 10 mantissa bits, float32
#: accumulation; PyTorch's ``set_float32_matmul_precision("high")``), which exists on CUDA GPUs of
#: compute capability 8.0 and later only: elsewhere "tf32" runs float32 products (of centred
#: features: :func:`seelike.cka.gram` always centres for "tf32").
GRAM_PRECISIONS = ("fp32", "tf32")


@contextlib.contextmanager
def gram_matmul(precision: str = "fp32", device: torch.device | str = "cpu"):
    """:func:`full_fp32`, with TF32 matmuls for ``precision`` "tf32" on a CUDA ``device`` (see
    :data:`GRAM_PRECISIONS`; on any other device full float32 precision stays, whatever torch's
    float32 matmul precision would mean there)."""
    if precision not in GRAM_PRECISIONS:
        raise ValueError(f"config key extraction.gram_precision: {precision!r} is not one of "
                         f"{', '.join(GRAM_PRECISIONS)}")
    with full_fp32():
        if precision == "tf32" and torch.device(device).type == "cuda":
            torch.set_float32_matmul_precision("high")   # CUDA: TF32 matmuls; restored by full_fp32
        yield


#: Minibatches each data loader worker prepares ahead of the forward on a GPU (DataLoader's
#: ``prefetch_factor``): two keep every worker busy while the GPU consumes the batch before.
PREFETCH_BATCHES = 2


def job_cpus() -> int:
    """The CPUs this job was given: SLURM's ``--cpus-per-task`` inside a SLURM job (``SLURM_CPUS_PER_TASK``,
    bounded by the CPUs the process may run on), else :func:`seelike.fileio.cpu_budget` (the step's
    ``resources.cpus``, which the submission exports as ``OMP_NUM_THREADS``; without it the CPUs of
    ``os.sched_getaffinity``)."""
    from .fileio import cpu_budget

    try:
        slurm = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    except ValueError:
        slurm = 0
    if slurm > 0:
        try:
            allowed = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            allowed = os.cpu_count() or slurm
        return max(1, min(slurm, allowed))
    return cpu_budget()


def loader_options(device: torch.device, num_workers, reads_from_memory: bool, batches: int | None = None) -> dict:
    """``torch.utils.data.DataLoader`` keyword arguments of an extraction job.

    ``num_workers``: an int (``extraction.num_workers``) is used as given; ``"auto"`` is the job's CPUs
    (:func:`job_cpus`), except on a CPU for a dataset whose items are copies out of memory
    (``reads_from_memory``: a rendered synthetic split fed without a transform, the demo's case),
    which gets none: there the forward keeps every core busy, and a worker costs more to start and to
    hand its batches over than such items cost to read (benchmarks/bench_loading.py). On a GPU even
    those items (about 1 ms per 224 px image on one core) would hold up the forward, so they get
    workers too. On CUDA, batches go through pinned memory (an asynchronous copy to the GPU) and each
    worker prepares :data:`PREFETCH_BATCHES` minibatches ahead. ``batches``: the minibatches the loader
    yields; each worker loads whole minibatches, so more workers than that would only idle."""
    cuda = torch.device(device).type == "cuda"
    if num_workers == "auto":
        workers = 0 if reads_from_memory and not cuda else job_cpus()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"config key extraction.num_workers: {num_workers!r} is neither auto nor an int >= 0; "
                         "set it to auto (the job's CPUs) or a number of loader worker processes")
    else:
        workers = num_workers
    if batches is not None:
        workers = min(workers, max(0, int(batches)))
    opts = {"num_workers": workers, "pin_memory": cuda}
    if workers and cuda:
        opts["prefetch_factor"] = PREFETCH_BATCHES
    return opts
