"""The deterministic example plan: dataset items -> order -> CKA minibatches -> shards.

Every model's extraction follows the same plan, so cross-model CKA pairs the same
examples in the same minibatches, and every shard records the plan (``to_dict``) and its
``digest`` so analyses can check that the plans of the shards they combine match
(``plan_differences`` / ``check_same_plan``).

Order. The examples are the ``n_examples`` items of ``available`` that come first when
items are sorted by ``blake2b(f"{seed}:{index}")``. This depends only on the seed and the
index values - not on the order in which ``available`` is given, on numpy's random
streams, or on the numpy version - and it is prefix-stable: a plan with fewer examples
uses the first examples of one with more, and adding items to ``available`` never
reorders the ones already there. Because the order is pseudo-random, consecutive
examples (and so every minibatch) mix classes.

Minibatch ``m`` holds plan positions ``[m * b, (m + 1) * b)``; shard ``s`` holds
minibatches ``[s * k, min((s + 1) * k, n_minibatches))`` (``k`` =
``minibatches_per_shard``), so the last shard may hold fewer minibatches.

Image folders. Indices are positions in the folder's sorted listing; with ``on_bad_file: skip``
the unreadable files found when the plan was made are left out of that listing and recorded in
``excluded`` (relative paths), so that the jobs that follow the plan rebuild the same listing
without decoding every file again. ``excluded`` is left out of ``to_dict`` when empty, so plans
without it keep their digests.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Iterator, Mapping

import numpy as np

__all__ = [
    "PLAN_VERSION",
    "MIN_MINIBATCH_SIZE",
    "MinibatchError",
    "check_minibatch",
    "Plan",
    "ShardPlan",
    "make_plan",
    "plan_differences",
    "check_same_plan",
]

PLAN_VERSION = 1
#: The unbiased HSIC estimator divides by (b - 3).
MIN_MINIBATCH_SIZE = 4


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """One shard: ``example_indices`` (dataset indices in plan order) and, per example, the
    global id of the minibatch it belongs to. ``start`` is the plan position of its first
    example."""

    index: int
    start: int
    example_indices: np.ndarray
    minibatch_ids: np.ndarray

    @property
    def n_examples(self) -> int:
        return len(self.example_indices)

    @property
    def minibatches(self) -> np.ndarray:
        """Global ids of this shard's minibatches, ascending."""
        return np.unique(self.minibatch_ids)


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"plan: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"plan: {name} must be >= {minimum}, got {value}")
    return int(value)


class MinibatchError(ValueError):
    """The minibatch size does not suit the example plan; `key` is the setting to change."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_minibatch(n_examples: int | None, minibatch_size, limit: int | None = None,
                    names: tuple[str, str] = ("n_examples", "minibatch_size"), where: str = "plan: ") -> int:
    """The one check of a minibatch size (the example plan, the config and the plan step all use it):
    at least MIN_MINIBATCH_SIZE examples, and `n_examples` (if given) a multiple of it. `names` are the
    settings' names in the message (the config passes its keys), `limit` the examples available."""
    n_name, b_name = names
    b = _int(b_name, minibatch_size, 1)
    if b < MIN_MINIBATCH_SIZE:
        raise MinibatchError(b_name, f"{where}{b_name} = {b} is too small: the example plan needs at least "
                                     f"{MIN_MINIBATCH_SIZE} examples per minibatch (the unbiased HSIC estimator "
                                     "divides by b - 3)")
    if n_examples is not None and n_examples % b:
        n = n_examples
        options = [v for v in ((n // b) * b, (n // b + 1) * b) if v > 0 and (limit is None or v <= limit)]
        hint = " or ".join(str(v) for v in options) if options else f"a multiple of {b}"
        raise MinibatchError(n_name, f"{where}{n_name} = {n} is not a multiple of {b_name} ({b}); use {hint}"
                                     + (f" (at most {limit} examples are available)" if limit is not None else ""))
    return b


@dataclass(frozen=True)
class Plan:
    """See the module docstring. ``indices`` is a tuple of dataset indices in plan order;
    ``indices_array`` gives it as int64 numpy."""

    dataset: str
    n_examples: int
    minibatch_size: int
    minibatches_per_shard: int
    seed: int
    indices: tuple
    excluded: tuple = ()

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"plan: dataset must be a non-empty string, got {self.dataset!r}")
        n = _int("n_examples", self.n_examples, 1)
        b = check_minibatch(None, self.minibatch_size)
        k = _int("minibatches_per_shard", self.minibatches_per_shard, 1)
        seed = _int("seed", self.seed, 0)
        idx = np.asarray(self.indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError("plan: indices must be a one-dimensional sequence of integers")
        if n % b:
            check_minibatch(n, b)
        if len(idx) != n:
            raise ValueError(f"plan: {len(idx)} indices given for n_examples={n}")
        if len(np.unique(idx)) != n:
            raise ValueError("plan: indices contain duplicates")
        for name, v in (("n_examples", n), ("minibatch_size", b), ("minibatches_per_shard", k), ("seed", seed)):
            object.__setattr__(self, name, v)
        object.__setattr__(self, "indices", tuple(int(i) for i in idx.tolist()))
        if isinstance(self.excluded, str) or not all(isinstance(r, str) and r for r in self.excluded):
            raise ValueError("plan: excluded must be a sequence of relative file paths")
        object.__setattr__(self, "excluded", tuple(sorted(set(self.excluded))))

    # -- structure -------------------------------------------------------------------
    @property
    def indices_array(self) -> np.ndarray:
        return np.asarray(self.indices, dtype=np.int64)

    @property
    def n_minibatches(self) -> int:
        return self.n_examples // self.minibatch_size

    @property
    def n_shards(self) -> int:
        return -(-self.n_minibatches // self.minibatches_per_shard)

    def shard(self, i: int) -> ShardPlan:
        i = int(i)
        if not 0 <= i < self.n_shards:
            raise IndexError(f"plan has {self.n_shards} shard(s); no shard {i}")
        b, k = self.minibatch_size, self.minibatches_per_shard
        m0, m1 = i * k, min((i + 1) * k, self.n_minibatches)
        return ShardPlan(
            index=i,
            start=m0 * b,
            example_indices=self.indices_array[m0 * b : m1 * b],
            minibatch_ids=np.repeat(np.arange(m0, m1, dtype=np.int64), b),
        )

    def shards(self) -> Iterator[ShardPlan]:
        return (self.shard(i) for i in range(self.n_shards))

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict (``version`` plus every field; ``indices`` as a list)."""
        d = {"version": PLAN_VERSION}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "excluded" and not v:
                continue
            d[f.name] = list(v) if f.name in ("indices", "excluded") else v
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        d = dict(d)
        version = d.pop("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ValueError(f"plan: version {version!r} is not supported (this code writes version {PLAN_VERSION})")
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d and k != "excluded"]
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"plan dict: missing key(s) {missing}, unknown key(s) {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "Plan":
        return cls.from_dict(json.loads(s))

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of ``to_dict()`` (indices included)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _canonical(d: Mapping) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _order_keys(seed: int, indices: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=16).digest() for i in indices.tolist()]


def make_plan(
    dataset: str,
    available,
    n_examples: int | None,
    minibatch_size: int,
    minibatches_per_shard: int,
    seed: int,
    excluded=(),
) -> Plan:
    """Choose and order ``n_examples`` of the ``available`` dataset indices (see the module
    docstring). ``n_examples=None`` takes the largest multiple of ``minibatch_size`` that
    fits. Errors (``ValueError``): too few available examples, ``n_examples`` not a
    multiple of ``minibatch_size`` (naming the nearest valid values), ``minibatch_size``
    below 4, duplicate or non-integer indices. ``excluded``: see the module docstring."""
    b = check_minibatch(None, minibatch_size)
    _int("minibatches_per_shard", minibatches_per_shard, 1)
    seed = _int("seed", seed, 0)
    avail = np.asarray(available)
    if avail.ndim != 1 or (avail.size and not np.issubdtype(avail.dtype, np.integer)):
        raise ValueError("plan: available must be a one-dimensional array of integer dataset indices")
    avail = avail.astype(np.int64)
    uniq = np.unique(avail)
    if len(uniq) != len(avail):
        raise ValueError(f"plan: available holds {len(avail) - len(uniq)} duplicate index(es)")
    if n_examples is None:
        n_examples = (len(uniq) // b) * b
        if n_examples == 0:
            raise ValueError(
                f"plan: only {len(uniq)} examples are available, fewer than one minibatch of {b}"
            )
    n = _int("n_examples", n_examples, 1)
    if n > len(uniq):
        raise ValueError(
            f"plan: n_examples={n} is larger than the {len(uniq)} examples available in the dataset"
        )
    if n % b:
        check_minibatch(n, b, limit=len(uniq))
    keys = _order_keys(seed, uniq)
    order = sorted(range(len(uniq)), key=keys.__getitem__)[:n]
    return Plan(
        dataset=dataset,
        n_examples=n,
        minibatch_size=b,
        minibatches_per_shard=int(minibatches_per_shard),
        seed=seed,
        indices=tuple(uniq[order].tolist()),
        excluded=excluded,
    )


def _as_dict(p) -> dict:
    if isinstance(p, Plan):
        return p.to_dict()
    if isinstance(p, Mapping):
        d = dict(p)
        if "indices" in d:
            d["indices"] = [int(i) for i in np.asarray(d["indices"]).reshape(-1).tolist()]
        d.setdefault("version", PLAN_VERSION)
        return d
    raise TypeError(f"expected a Plan or a plan dict, got {type(p).__name__}")


def plan_differences(a, b) -> list[str]:
    """Keys whose values differ between two plans (``Plan`` or ``to_dict()`` dicts), in
    field order (``version`` first, unknown keys last, sorted); ``[]`` when identical."""
    da, db = _as_dict(a), _as_dict(b)
    order = ["version"] + [f.name for f in fields(Plan)]
    keys = order + sorted((set(da) | set(db)) - set(order))
    missing = object()
    return [k for k in keys if (k in da or k in db) and da.get(k, missing) != db.get(k, missing)]


def check_same_plan(a, b, a_name: str = "first", b_name: str = "second") -> None:
    """Raise ``ValueError`` naming both sources and the differing keys unless the plans match."""
    diff = plan_differences(a, b)
    if diff:
        raise ValueError(
            f"example plans of {a_name} and {b_name} differ in {', '.join(diff)}; "
            f"extract both with the same dataset, analysis and cka settings"
        )


# ----------------------------------------------------------------------------- the plan file

def write_plan_file(path, plan: Plan) -> None:
    """Write the plan step's output: the plan's JSON, its sha256 recorded beside it first."""
    from .fileio import atomic_write, record_checksum, to_jsonable

    text = (json.dumps(to_jsonable(plan.to_dict()), indent=2) + "\n").encode("utf-8")
    with atomic_write(path) as tmp:
        tmp.write_bytes(text)
        record_checksum(path, hashlib.sha256(text).hexdigest())


def read_plan_file(path) -> dict:
    """The plan step's output as a dict, checked before use: its sha256 against the one recorded at
    write, then its structure (Plan.from_dict). Errors name the file and what to run."""
    from .fileio import read_json, verify_checksum

    remedy = "run the workflow again with --forcerun plan (every extraction then follows the new plan)"
    verify_checksum(path, "example plan", remedy)
    doc = read_json(path, "example plan", remedy)
    try:
        Plan.from_dict(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"example plan '{path}' is not a valid plan ({e}); {remedy}") from None
    return doc
