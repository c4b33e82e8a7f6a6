"""Small file helpers shared by every step: atomic writes and checksums.

Every output is written to a temporary name in the same directory and renamed into place
only when complete, so a crashed or killed step never leaves a half-written file under
the final name (Snakemake would otherwise treat it as up to date).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would have given the file


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The caller writes the file at the yielded path (by name: any library that takes a
    path works, e.g. ``safetensors.torch.save_file`` or ``h5py.File``). The temporary file
    already exists (empty) when the block starts, and ends in the target's extension. If the block
    raises, the temporary file is removed and ``path`` is left untouched. The parent
    directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed by SIGKILL leaves its temporary behind; one writer per target (Snakemake
    # and the plan guarantee that), so earlier leftovers of this target are garbage.
    for stale in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        with contextlib.suppress(OSError):
            stale.unlink()
    # keep the real extension last: writers that infer the format from it (savefig, np.save,
    # safetensors/timm loaders) see the same name shape as the final file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    with contextlib.suppress(OSError):
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"atomic_write: nothing was written to the temporary file for {path}")
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


#: sha256_file hashes a mapped file this many bytes per call: hashlib releases the GIL for the whole
#: call, so a hash in a thread (extraction hashes the checkpoint while the model is built) waits for the
#: GIL once per slice, not once per 1 MiB read
_HASH_SLICE = 1 << 28


def sha256_file(path: PathLike) -> str:
    """Hex sha256 digest of a file: mapped into memory and hashed in slices of 256 MiB (no copy of
    the file into the process); read in 1 MiB chunks where it cannot be mapped (an empty or special
    file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        try:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):     # empty file, pipe, a filesystem without mmap
            m = None
        if m is not None:
            with m, memoryview(m) as view:
                for s in range(0, len(view), _HASH_SLICE):
                    h.update(view[s:s + _HASH_SLICE])
            return h.hexdigest()
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


#: write_segments: files of at least this many bytes are written with O_DIRECT where the filesystem
#: takes it, through a bounce buffer of _DIRECT_CHUNK bytes aligned to _DIRECT_ALIGN
_DIRECT_MIN = 1 << 20
_DIRECT_CHUNK = 4 << 20
_DIRECT_ALIGN = 4096
_DIRECT_WRITERS = 2


def write_segments(path: PathLike, segments, size: int) -> None:
    """Write the existing file ``path`` as ``size`` bytes made of ``segments`` -- (offset, bytes-like)
    pairs, laid down in order (a later one over an earlier one where they overlap), zeros elsewhere --
    and fsync it. For :func:`atomic_write`'s temporary file: what ``seelike.store.write_shard`` makes of
    HDF5's structure writes and the arrays it writes from their own memory.

    A file of 1 MiB or more goes to the disk with O_DIRECT, in 4 MiB chunks copied into an aligned
    buffer (one per writer thread, two), not through the page cache: a shard is written once and read
    by another job, often on another node, so caching it only takes memory (on a SLURM node, memory
    that counts against the job). On the 2-core VM of benchmarks/README.md a new 49 MB file took
    200-260 ms through the page cache plus 22 ms of fsync, and 25-28 ms with O_DIRECT, fsync included:
    there every page-cache page not used since the guest last gave it back to the host faults through
    the hypervisor. Where the filesystem refuses O_DIRECT or its alignment (EINVAL), and for smaller
    files, the file is written with plain ``pwrite`` calls from the segments' own memory. Either way
    the bytes are the same."""
    segs = [(int(o), memoryview(d).cast("B")) for o, d in segments]
    size = int(size)
    direct = getattr(os, "O_DIRECT", 0)
    if direct and size >= _DIRECT_MIN:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | direct)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        else:
            try:
                _write_direct(fd, segs, size)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
            finally:
                os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        for offset, data in segs:
            _pwrite_all(fd, data[:max(0, size - offset)], offset)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data, offset: int) -> None:
    """All of ``data`` into ``fd`` at ``offset``: pwrite may write less than asked (and Linux writes at
    most about 2 GiB per call)."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view[:1 << 30], offset)
        view, offset = view[n:], offset + n


def _write_direct(fd: int, segs: list, size: int) -> None:
    """write_segments' O_DIRECT path: the file chunk by chunk, each copied into an aligned buffer and
    written from it, by :data:`_DIRECT_WRITERS` threads taking every other chunk, so that one copies
    while the other's write waits on the device (a 49 MB file on the 2-core VM: 25-28 ms with two,
    29-45 ms with one)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    chunk, align = _DIRECT_CHUNK, _DIRECT_ALIGN
    touching: dict[int, list[int]] = {}          # chunk -> the segments that reach into it, in order
    for i, (offset, data) in enumerate(segs):
        end = min(offset + len(data), size)
        for c in range(offset // chunk, (end - 1) // chunk + 1 if end > offset else 0):
            touching.setdefault(c, []).append(i)
    chunks = -(-size // chunk)
    writers = max(1, min(_DIRECT_WRITERS, chunks))

    def write_chunks(first: int) -> None:
        raw = np.empty(chunk + align, dtype=np.uint8)    # on the heap: pages a job has used already
        start = -raw.ctypes.data % align
        buf = memoryview(raw[start:start + chunk]).cast("B")
        for c in range(first, chunks, writers):
            lo = c * chunk
            n = min(size, lo + chunk) - lo
            covered = []
            for i in touching.get(c, ()):
                offset, data = segs[i]
                a, b = max(lo, offset), min(lo + n, offset + len(data))
                buf[a - lo:b - lo] = data[a - offset:b - offset]
                covered.append((a - lo, b - lo))
            padded = -(-n // align) * align
            pos = 0
            for a, b in sorted(covered) + [(padded, padded)]:   # zeros where nothing was written
                if a > pos:
                    buf[pos:a] = bytes(a - pos)
                pos = max(pos, b)
            written = 0
            while written < padded:
                written += os.pwrite(fd, buf[written:padded], lo + written)

    with ThreadPoolExecutor(writers - 1 or 1, thread_name_prefix="seelike-write") as pool:
        others = [pool.submit(write_chunks, w) for w in range(1, writers)]
        try:
            write_chunks(0)
        finally:
            for f in others:          # every writer is done with fd before it is closed
                f.exception()
        for f in others:
            f.result()
    os.ftruncate(fd, size)
    os.fsync(fd)


def cpu_budget() -> int:
    """Cores this process may use: the job's thread count (``OMP_NUM_THREADS``, which the submission
    sets from the rule's threads) when set, else the CPUs it is allowed to run on."""
    try:
        env = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        env = 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(env, cpus) if env > 0 else cpus)


def sha256_files(paths: list[PathLike], workers: int | None = None) -> list[str]:
    """:func:`sha256_file` of several files, ``workers`` (default: :func:`cpu_budget`) at a time.

    Threads suffice: hashlib releases the GIL while it hashes a chunk, so a job's shards are
    hashed on all of its cores instead of one (one file is inherently sequential)."""
    paths = list(paths)
    workers = min(len(paths), workers or cpu_budget())
    if workers <= 1:
        return [sha256_file(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(sha256_file, paths))


def to_jsonable(obj: Any, *, nan_as_null: bool = False) -> Any:
    """Recursively convert tuples, paths, numpy/torch scalars to plain JSON types.

    With ``nan_as_null``, NaN and infinities become ``None`` (JSON has no spelling for them)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nan_as_null=nan_as_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nan_as_null=nan_as_null) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float):
        return None if nan_as_null and not math.isfinite(obj) else obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return to_jsonable(item(), nan_as_null=nan_as_null)
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def read_json(path: PathLike, what: str, remedy: str = "", error: type[Exception] = ValueError,
              missing: str | None = None) -> Any:
    """The JSON document in ``path``. Every failure raises ``error`` with one message that names
    ``what`` the file is, the file, the fault and, when given, ``remedy`` (what to do next): a missing
    file (``missing`` replaces the default wording), an unreadable one, and text that is not JSON (a
    corrupt or cut-short write). What the document must hold is the caller's check."""
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error((missing or f"{what} '{path}' does not exist") + tail) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} '{path}' cannot be read ({e}){tail}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} '{path}' is not valid JSON ({e}); it is corrupt or was cut short{tail}") from None


def write_json_atomic(path: PathLike, obj: Any, *, indent: int = 2, nan_as_null: bool = False) -> None:
    """Write ``obj`` as JSON (tuples become lists, unknown objects their ``str``) atomically.

    NaN or an infinity in ``obj`` is an error, unless ``nan_as_null`` writes it as ``null``
    (for measurements where a missing value is expected, such as a benchmark's failed case)."""
    try:
        text = json.dumps(to_jsonable(obj, nan_as_null=nan_as_null), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:  # NaN / inf
        raise ValueError(f"cannot write {path}: {e} (NaN or infinity in the data)") from e
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- recorded checksums

class ChecksumMismatch(ValueError):
    """A file differs from the sha256 recorded when it was written (or has none recorded)."""


def checksum_path(path: PathLike) -> Path:
    """Where the sha256 of a file written by the workflow is recorded: beside it, `<file>.sha256`."""
    return Path(str(path) + ".sha256")


def record_checksum(path: PathLike, digest: str | None = None) -> str:
    """Record a file's sha256 beside it (atomically). Writers call it on the complete file, before its
    final rename when they can (a sidecar for a file not yet renamed is harmless; the reverse is not)."""
    digest = digest or sha256_file(path)
    with atomic_write(checksum_path(path)) as tmp:
        tmp.write_text(digest + "\n")
    return digest


def verify_checksum(path: PathLike, what: str, remedy: str) -> str:
    """The one check of a file the workflow wrote, wherever it is read: its sha256 against the one recorded
    at write. Raises ChecksumMismatch naming the file and what to run (`remedy`)."""
    side = checksum_path(path)
    try:
        recorded = side.read_text().strip()
    except OSError:
        raise ChecksumMismatch(f"{what} '{path}' has no recorded sha256 ('{side}' is missing); {remedy}") from None
    actual = sha256_file(path)
    if actual != recorded:
        raise ChecksumMismatch(f"{what} '{path}' changed since it was written: sha256 {actual[:16]}..., recorded "
                               f"{recorded[:16]}... (bit flip or overwrite); {remedy}")
    return actual
