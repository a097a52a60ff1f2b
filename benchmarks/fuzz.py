"""Fuzz tview's reader: damaged copies of a real recorded run, each read whole in its own process with a deadline.

Each case copies a recorded 2-rank run, damages it one way (truncation, byte flips in metadata or data,
zeroed pages, manifest edits, h5py-level edits, odd files), then reads it whole in a fresh process:
open_run with and without skip_bad_shards, every public read over every layer, statistic and rank,
rank_status, first_nonfinite, and `tview info` (cli.info_text). Each read is compared with the same read
of the undamaged run and the case is classified (worst read wins):

  ok-same      every read returned the original data (or the original's own error)
  tview-error  a TviewError whose message names the file (shard, manifest or run folder)
  UNNAMED      a TviewError that does not name the file
  SILENT       data that differs from the original, without an error
  FOREIGN      a non-TviewError exception escaped (KeyError, OSError, TypeError, MemoryError, ...)
  CRASH        the reading process died (signal, or exit without a Python exception)
  HANG         no answer before the deadline
  SETUP        the harness could not damage the copy this way (its bug, or a layout it does not know)

    python benchmarks/fuzz.py [--cases 300] [--seed 0] [--json failing.json] [--deadline 10]
    python benchmarks/fuzz.py --only h5edit-copy_as_other-0      # one case, with its reads in detail
    python benchmarks/fuzz.py --only metaflip-ohdr-3 --keep /tmp/k  # ... and keep the damaged copy to open by hand
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

partial = functools.partial

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUTCOMES = ("ok-same", "tview-error", "UNNAMED", "SILENT", "FOREIGN", "CRASH", "HANG", "SETUP")
GOOD = ("ok-same", "tview-error")
SHARD0, SHARD1, MANIFEST = "rank-00000.h5", "rank-00001.h5", "run.tview"
MEMORY_LIMIT = 3 << 30  # address space of a reading process: an unbounded read ends in MemoryError, not swap


# -- the cases ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    cls: str
    mutation: str
    index: int

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.mutation}-{self.index}"

    @staticmethod
    def parse(case_id: str) -> "Case":
        cls, rest = case_id.split("-", 1)
        mutation, index = rest.rsplit("-", 1)
        return Case(cls, mutation, int(index))


@dataclasses.dataclass
class Result:
    case: str
    cls: str
    mutation: str
    outcome: str
    what: str = ""  # the read that decided the outcome, and what it did
    exception: str = ""
    params: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    counts: dict = dataclasses.field(default_factory=dict)  # reads per outcome
    stack: str = ""  # for a HANG: the Python stack of the reading process at the deadline


def _xor(path: str, offset: int, value: int) -> dict:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        if not old:
            return {"offset": offset, "skipped": "past the end"}
        f.seek(offset)
        f.write(bytes([old[0] ^ value]))
    return {"offset": offset, "xor": value}


def _zero(path: str, offset: int, n: int) -> dict:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * max(0, min(n, os.path.getsize(path) - offset)))
    return {"offset": offset, "bytes": n}


def _truncate(path: str, size: int) -> dict:
    os.truncate(path, size)
    return {"size": size}


def shard_layout(path: str) -> dict:
    """Object header addresses and data extents (chunks, contiguous blocks) of an undamaged shard."""
    import h5py
    objects, chunks, contig = [], [], []

    def visit(name, obj):
        objects.append((name, int(h5py.h5o.get_info(obj.id).addr)))
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            off = obj.id.get_offset()
            if off is not None and obj.id.get_storage_size():
                contig.append((name, int(off), int(obj.id.get_storage_size())))
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            if info.byte_offset is not None and info.size:
                chunks.append((name, int(info.byte_offset), int(info.size)))

    with h5py.File(path, "r") as f:
        objects.append(("/", int(h5py.h5o.get_info(f.id).addr)))
        f.visititems(visit)
    return {"objects": sorted(objects), "chunks": sorted(chunks), "contig": sorted(contig)}


def _pick(rng: random.Random, items: list, index: int | None = None):
    return items[index % len(items)] if index is not None else rng.choice(items)


# Random mutations: parameters drawn from the case's own random generator.
def m_truncate_shard_frac(run, rng, case):
    p = os.path.join(run, _pick(rng, [SHARD0, SHARD1]))
    return dict(_truncate(p, int(os.path.getsize(p) * rng.uniform(0.0, 1.0))), file=os.path.basename(p))


def m_truncate_shard_tail(run, rng, case):
    p = os.path.join(run, _pick(rng, [SHARD0, SHARD1]))
    return dict(_truncate(p, os.path.getsize(p) - rng.randint(1, 4096)), file=os.path.basename(p))


def m_truncate_manifest(run, rng, case):
    p = os.path.join(run, MANIFEST)
    return _truncate(p, rng.randint(0, os.path.getsize(p) - 1))


def m_metaflip_head(run, rng, case):
    p = os.path.join(run, _pick(rng, [SHARD0, SHARD1]))
    return dict(_xor(p, rng.randrange(min(65536, os.path.getsize(p))), rng.randint(1, 255)), file=os.path.basename(p))


def m_metaflip_superblock(run, rng, case):
    return dict(_xor(os.path.join(run, SHARD0), rng.randrange(48), rng.randint(1, 255)), file=SHARD0)


def m_metaflip_ohdr(run, rng, case):
    """A byte in the object header of one object (picked by the case index, in name order)."""
    p = os.path.join(run, SHARD0)
    name, addr = _pick(rng, shard_layout(p)["objects"], case.index)
    return dict(_xor(p, addr + rng.randrange(48), rng.randint(1, 255)), file=SHARD0, object=name)


def m_dataflip_chunk(run, rng, case):
    p = os.path.join(run, _pick(rng, [SHARD0, SHARD1]))
    name, off, size = rng.choice(shard_layout(p)["chunks"])
    return dict(_xor(p, off + rng.randrange(size), rng.randint(1, 255)), file=os.path.basename(p), dataset=name)


def m_dataflip_row0(run, rng, case):
    """The first byte of the first chunk of one chunked dataset (picked by the case index, in name order)."""
    p = os.path.join(run, SHARD0)
    firsts = {}
    for name, off, _ in shard_layout(p)["chunks"]:
        firsts.setdefault(name, off)
    name = sorted(firsts)[case.index % len(firsts)]
    return dict(_xor(p, firsts[name] + 2, 0x40), file=SHARD0, dataset=name)  # a high bit of a value's first word


def m_dataflip_contig(run, rng, case):
    """A byte of a small fixed dataset (status flags, probe inputs, bin edges): contiguous, or in one chunk."""
    p = os.path.join(run, SHARD0)
    layout = shard_layout(p)
    counts = {}
    for name, _, _ in layout["chunks"]:
        counts[name] = counts.get(name, 0) + 1
    small = layout["contig"] + [c for c in layout["chunks"] if counts[c[0]] == 1 and c[2] <= 65536]
    name, off, size = rng.choice(sorted(small))
    return dict(_xor(p, off + rng.randrange(size), rng.randint(1, 255)), file=SHARD0, dataset=name)


def m_zeropage_page(run, rng, case):
    p = os.path.join(run, _pick(rng, [SHARD0, SHARD1]))
    return dict(_zero(p, 4096 * rng.randrange(-(-os.path.getsize(p) // 4096)), 4096), file=os.path.basename(p))


def m_zeropage_first(run, rng, case):
    return dict(_zero(os.path.join(run, SHARD0), 0, 4096), file=SHARD0)


# Manifest edits.
def _edit_manifest(run, fn) -> dict:
    p = os.path.join(run, MANIFEST)
    with open(p) as f:
        m = json.load(f)
    out = fn(m)
    with open(p, "w") as f:
        json.dump(out if out is not None else m, f)
    return {}


def _set(key, value):
    def edit(m):
        m[key] = value
    return edit


MANIFEST_EDITS = {
    "layers_reversed": lambda m: m.__setitem__("layers", m["layers"][::-1]),
    "layers_renamed": lambda m: m["layers"][0].__setitem__("name", "bogus"),
    "layers_one_dropped": lambda m: m.__setitem__("layers", m["layers"][1:]),
    "layers_null": _set("layers", None),
    "layers_string": _set("layers", "conv1"),
    "layers_no_names": lambda m: m.__setitem__("layers", [{} for _ in m["layers"]]),
    "world_size_huge": _set("world_size", 1_000_000_000),
    "world_size_two": _set("world_size", "two"),
    "world_size_null": _set("world_size", None),
    "world_size_negative": _set("world_size", -3),
    "world_size_zero": _set("world_size", 0),
    "world_size_float": _set("world_size", 2.5),
    "world_size_one": _set("world_size", 1),
    "schema_newer": _set("tview_schema_version", 999),
    "schema_string": _set("tview_schema_version", "1"),
    "schema_null": _set("tview_schema_version", None),
    "schema_negative": _set("tview_schema_version", -1),
    "json_list": lambda m: [m],
    "json_null": lambda m: [None],
}


def m_manifest_edit(run, rng, case):
    return _edit_manifest(run, MANIFEST_EDITS[case.mutation])


def m_manifest_missing_key(run, rng, case):
    p = os.path.join(run, MANIFEST)
    with open(p) as f:
        keys = sorted(json.load(f))
    key = keys[case.index % len(keys)]
    _edit_manifest(run, lambda m: m.pop(key))
    return {"key": key}


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


MANIFEST_BYTES = {
    "not_json": b"this is not json\n",
    "empty": b"",
    "deep_nesting": b"[" * 200000 + b"]" * 200000,
    "bad_utf8": b'{"tview_schema_version": 1, "model": "\xff\xfe"}',
    "binary": bytes(range(256)) * 16,
}


def m_manifest_bytes(run, rng, case):
    _write(os.path.join(run, MANIFEST), MANIFEST_BYTES[case.mutation])
    return {}


# h5py-level edits of rank 0's shard (written with h5py in place, as another program could).
def _h5(run, fn, name=SHARD0) -> dict:
    import h5py
    with h5py.File(os.path.join(run, name), "r+") as f:
        return fn(f) or {}


def _datasets(f) -> list[str]:
    import h5py
    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)


def _step_columns(f) -> list[str]:
    return [n for n in _datasets(f) if n.rsplit("/", 1)[-1] == "step" and f[n].shape[0] >= 3]


def _rewrite(f, name, data):
    """Replace a dataset by `data`, keeping the other layout properties h5py allows (chunked, growable)."""
    del f[name]
    data = np.asarray(data)
    f.create_dataset(name, data=data, maxshape=(None,) + data.shape[1:], chunks=True)


def _edit_steps(fn):
    def edit(f, case):
        name = _pick(None, _step_columns(f), case.index)
        s = f[name][:]
        f[name][:] = fn(s)
        return {"dataset": name}
    return edit


def _remove_dataset(f, case):
    name = _pick(None, _datasets(f), case.index)
    del f[name]
    return {"dataset": name}


def _wrong_shape(f, case):
    """A dataset replaced by one with a column fewer (2-D and up) or a row fewer (1-D)."""
    name = _pick(None, _datasets(f), case.index)
    data = f[name][:]
    data = data[:, :-1] if data.ndim >= 2 and data.shape[1] > 1 else data[:-1]
    _rewrite(f, name, data)
    return {"dataset": name, "shape": list(data.shape)}


def _attr(key, value):
    def edit(f, case):
        f.attrs[key] = value
    return edit


def _reverse_layers_attr(f, case):
    f.attrs["layers_json"] = json.dumps(json.loads(f.attrs["layers_json"])[::-1])


H5_EDITS = {
    "rank_attr_other": _attr("rank", 1),
    "rank_attr_string": _attr("rank", "zero"),
    "schema_attr_newer": _attr("tview_schema_version", 999),
    "schema_attr_removed": lambda f, c: f.attrs.__delitem__("tview_schema_version"),
    "layers_attr_reversed": _reverse_layers_attr,
    "layers_attr_garbage": _attr("layers_json", "{not json"),
    "steps_negative": _edit_steps(lambda s: -s - 1),
    "steps_reversed": _edit_steps(lambda s: s[::-1]),
    "steps_minus1_last": _edit_steps(lambda s: np.concatenate([s[:-1], [-1]])),
    "steps_swapped": _edit_steps(lambda s: np.concatenate([s[1:2], s[:1], s[2:]])),
    "steps_duplicate": _edit_steps(lambda s: np.concatenate([s[:1], s[:-1]])),
    "dataset_removed": _remove_dataset,
    "wrong_shape": _wrong_shape,
}


def m_h5edit(run, rng, case):
    return _h5(run, lambda f: H5_EDITS[case.mutation](f, case))


def m_h5edit_copy_as_other(run, rng, case):
    shutil.copyfile(os.path.join(run, SHARD0), os.path.join(run, SHARD1))
    return {"copied": f"{SHARD0} -> {SHARD1}"}


def m_h5edit_huge_rank(run, rng, case):
    shutil.copyfile(os.path.join(run, SHARD1), os.path.join(run, "rank-99999.h5"))
    return {"copied": f"{SHARD1} -> rank-99999.h5"}


# Odd files in place of a shard or the manifest.
def _replace(run, name, make):
    p = os.path.join(run, name)
    os.remove(p)
    make(p)
    return {"file": name}


def _outside_copy(p):
    outside = os.path.join(os.path.dirname(os.path.dirname(p)), "outside-" + os.path.basename(p))
    return outside


ODD = {
    "fifo": os.mkfifo,
    "directory": os.mkdir,
    "empty": lambda p: _write(p, b""),
    "symlink_loop": lambda p: os.symlink(os.path.basename(p), p),
    "symlink_dangling": lambda p: os.symlink("/nonexistent/tview-fuzz", p),
    "symlink_etc": lambda p: os.symlink("/etc/hostname", p),
    "devnull": lambda p: os.symlink("/dev/zero", p),
}


def m_odd_shard(run, rng, case):
    return _replace(run, SHARD0, ODD[case.mutation.removesuffix("_shard")])


def m_odd_manifest(run, rng, case):
    return _replace(run, MANIFEST, ODD[case.mutation.removesuffix("_manifest")])


def m_odd_symlink_outside(run, rng, case):
    """rank 0's shard moved outside the run folder and linked back (the reader may follow it; the dashboard
    must not serve files resolving outside its root)."""
    p = os.path.join(run, SHARD0)
    outside = _outside_copy(p)
    os.replace(p, outside)
    os.symlink(outside, p)
    return {"file": SHARD0, "target": outside}


def m_odd_chmod000(run, rng, case):
    name = SHARD0 if case.mutation == "chmod000_shard" else MANIFEST
    os.chmod(os.path.join(run, name), 0)
    return {"file": name, "note": "running as root: mode 000 does not stop reads" if os.geteuid() == 0 else ""}


def m_odd_garbage_extra(run, rng, case):
    _write(os.path.join(run, "rank-00002.h5"), os.urandom(3000))
    return {"file": "rank-00002.h5"}


def m_none(run, rng, case):
    return {}


RANDOM_MUTATIONS = {
    ("truncate", "shard_frac"): m_truncate_shard_frac, ("truncate", "shard_tail"): m_truncate_shard_tail,
    ("truncate", "manifest"): m_truncate_manifest,
    ("metaflip", "head"): m_metaflip_head, ("metaflip", "superblock"): m_metaflip_superblock,
    ("metaflip", "ohdr"): m_metaflip_ohdr,
    ("dataflip", "chunk"): m_dataflip_chunk, ("dataflip", "contig"): m_dataflip_contig,
    ("dataflip", "row0"): m_dataflip_row0,
    ("zeropage", "page"): m_zeropage_page,
}
FIXED_MUTATIONS = {("none", "none"): m_none, ("zeropage", "first"): m_zeropage_first,
                   ("manifest", "missing_key"): m_manifest_missing_key,
                   ("h5edit", "copy_as_other"): m_h5edit_copy_as_other, ("h5edit", "huge_rank"): m_h5edit_huge_rank,
                   ("odd", "symlink_outside"): m_odd_symlink_outside, ("odd", "garbage_extra"): m_odd_garbage_extra,
                   ("odd", "chmod000_shard"): m_odd_chmod000, ("odd", "chmod000_manifest"): m_odd_chmod000}
FIXED_MUTATIONS.update({("manifest", k): m_manifest_edit for k in MANIFEST_EDITS})
FIXED_MUTATIONS.update({("manifest", k): m_manifest_bytes for k in MANIFEST_BYTES})
FIXED_MUTATIONS.update({("h5edit", k): m_h5edit for k in H5_EDITS})
FIXED_MUTATIONS.update({("odd", k + "_shard"): m_odd_shard for k in ODD})
FIXED_MUTATIONS.update({("odd", k + "_manifest"): m_odd_manifest for k in ODD})
MUTATIONS = {**RANDOM_MUTATIONS, **FIXED_MUTATIONS}
MULTI = {("manifest", "missing_key"): 12, ("h5edit", "dataset_removed"): 12, ("h5edit", "wrong_shape"): 8,
         ("h5edit", "steps_negative"): 2, ("h5edit", "steps_reversed"): 2, ("metaflip", "ohdr"): 0,
         ("dataflip", "row0"): 0}


def make_cases(n: int, seed: int) -> list[Case]:
    """Every fixed mutation (some at several indexes), then random ones round-robin up to n cases in all."""
    cases = []
    for key in FIXED_MUTATIONS:
        if key != ("none", "none"):
            cases += [Case(*key, i) for i in range(MULTI.get(key, 1))]
    kinds = list(RANDOM_MUTATIONS)
    i = 0
    while len(cases) < n:
        cls, mutation = kinds[i % len(kinds)]
        cases.append(Case(cls, mutation, i // len(kinds)))
        i += 1
    return cases[:n] if n < len(cases) else cases


def apply(case: Case, run_dir: str, seed: int) -> dict:
    """Damage the run copy in run_dir the way the case says; returns the parameters used."""
    rng = random.Random(f"{seed}:{case.id}")
    return MUTATIONS[(case.cls, case.mutation)](run_dir, rng, case)


# -- reading a run whole (in the worker process) -------------------------------------------------------
def _canon(v, h, norm):
    if isinstance(v, np.ma.MaskedArray):
        h.update(b"M")
        _canon(np.ma.getmaskarray(v), h, norm)
        v = v.data
    if isinstance(v, np.ndarray):
        h.update(f"{v.dtype.str}{v.shape}".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    elif isinstance(v, dict):
        for k in sorted(v, key=repr):
            h.update(norm(repr(k)).encode())
            _canon(v[k], h, norm)
    elif isinstance(v, (list, tuple)):
        h.update(f"{type(v).__name__}{len(v)}".encode())
        for x in v:
            _canon(x, h, norm)
    else:
        h.update(norm(repr(v.item() if isinstance(v, np.generic) else v)).encode())


def _summary(v) -> str:
    with np.printoptions(threshold=6, edgeitems=2, precision=4):
        return repr(v)[:300]


class ReadLog:
    """Every read of a case, one JSON line each (a 'begin' line first: a hang shows where it hung)."""

    def __init__(self, path: str, run_dir: str):
        self.f = open(path, "w")
        self.run_dir = run_dir
        self.failed = False

    def norm(self, text: str) -> str:
        return text.replace(self.run_dir, "<RUN>")

    def write(self, entry: dict):
        self.f.write(json.dumps(entry) + "\n")
        self.f.flush()

    def call(self, key: str, fn, kind: str = "data"):
        self.write({"begin": key})
        self.failed = True
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - classifying every exception is the point
            from tview.errors import TviewError
            self.write({"key": key, "kind": kind, "err": type(exc).__name__, "tview": isinstance(exc, TviewError),
                        "msg": str(exc)[:3000]})
            return None
        self.failed = False
        self.note(key, value, kind)
        return value

    def note_unless_failed(self, key: str, value, reported: str | None):
        """A read's value again as data (to compare), unless that read raised."""
        if not self.failed:
            self.note(key, value, reported=reported)

    def note(self, key: str, value, kind: str = "data", reported: str | None = None):
        h = hashlib.sha1()
        _canon(value, h, self.norm)
        self.write({"key": key, "kind": kind, "ok": h.hexdigest(), "summary": self.norm(_summary(value)),
                    "reported": reported})


def _names(value, base: list, cap: int = 64) -> list:
    """The base run's names, then those the damaged run adds (only hashable strings/ints, at most cap)."""
    out = list(base)
    if isinstance(value, (list, tuple)):
        out += [v for v in value if isinstance(v, (str, int)) and not isinstance(v, bool) and v not in out]
    return out[:cap]


def _read_layer(run, log, p, r, layer, names):
    for s in names["stats"]:
        log.call(f"{p}stat|{s}|{layer}|{r}", partial(run.stat, s, layer, r))
        log.call(f"{p}stat_info|{s}|{layer}|{r}", partial(run.stat_info, s, layer, r))
    for s in names["channel_stats"]:
        log.call(f"{p}stat|{s}|{layer}|{r}", partial(run.stat, s, layer, r))
        log.call(f"{p}channel_values_at|{s}|{layer}|{r}", partial(run.channel_values_at, s, layer, None, r))
    for k in names["hist_kinds"]:
        log.call(f"{p}histogram|{k}|{layer}|{r}", partial(run.histogram, k, layer, r))
    log.call(f"{p}trajectory|{layer}|{r}", partial(run.trajectory, layer, r))
    log.call(f"{p}filters|{layer}|{r}", partial(run.filters, layer, None, r))
    log.call(f"{p}feature_maps|{layer}|{r}", partial(run.feature_maps, layer, None, r))


def _read_rank(run, log, p, r, names):
    log.call(f"{p}steps|{r}", partial(run.steps, r))
    scalars = _names(log.call(f"{p}scalar_names|{r}", partial(run.scalar_names, r)), names["scalars"].get(str(r), []))
    for s in scalars + ["wall_time"]:
        log.call(f"{p}scalar|{s}|{r}", partial(run.scalar, s, r))
    if scalars:
        log.call(f"{p}scalar_max5|{scalars[0]}|{r}", partial(run.scalar, scalars[0], r, max_points=5))
    log.call(f"{p}snapshot_steps|{r}", partial(run.snapshot_steps, r))
    log.call(f"{p}probe_inputs|{r}", partial(run.probe_inputs, r))
    log.call(f"{p}trajectories|{r}", partial(run.trajectories, r))
    log.call(f"{p}first_nonfinite|{r}", partial(run.first_nonfinite, r))
    for s in names["stats"]:
        log.call(f"{p}stat_matrix|{s}|{r}", partial(run.stat_matrix, s, r))
        log.call(f"{p}layer_values_at|{s}|last|{r}", partial(run.layer_values_at, s, None, r))
        log.call(f"{p}layer_values_at|{s}|mid|{r}", partial(run.layer_values_at, s, names["mid_step"], r))
    for layer in names["layers"]:
        _read_layer(run, log, p, r, layer, names)


def _read_status(run, log, p):
    status = log.call(f"{p}rank_status", run.rank_status, kind="report")
    if isinstance(status, dict):
        for r, s in list(status.items())[:16]:
            problem = s.get("problem") if isinstance(s, dict) else None
            log.note(f"{p}rank_status[{r}]", s, reported=problem)
    log.call(f"{p}stopped_ranks", run.stopped_ranks, kind="report")
    log.call(f"{p}problems", lambda: dict(run.problems), kind="report")


def read_whole(run_dir: str, log: ReadLog, base: dict) -> dict:
    """Read everything tview's public API offers of the run, both ways of opening it. Returns the names
    found (the undamaged run's are the base the damaged runs are read over)."""
    from tview.cli import info_text
    found = {}
    for skip in (False, True):
        found = _read_opened(run_dir, log, base, skip) or found
    log.call("info_text", partial(info_text, run_dir), kind="report")
    return found


def _listed(log: ReadLog, key: str, fn, problems: str | None):
    """A name list or size of the run: data to compare, unless the run reports problems (then, with shards
    left out, it may rightly differ: the manifest's layers, no statistics)."""
    value = log.call(key + "_read", fn, kind="report")
    log.note_unless_failed(key, value, problems)
    return value


def _read_opened(run_dir: str, log: ReadLog, base: dict, skip: bool) -> dict | None:
    import tview
    p = f"skip={int(skip)}|"
    run = log.call(p + "open", partial(tview.open_run, run_dir, skip_bad_shards=skip), kind="report")
    if run is None:
        return None
    problems = "; ".join(str(v) for v in dict(getattr(run, "problems", {}) or {}).values()) or None
    names = {"ranks": _names(_listed(log, p + "ranks", lambda: list(run.ranks), problems), base.get("ranks", []), 8),
             "scalars": dict(base.get("scalars", {})), "mid_step": base.get("mid_step", 0)}
    for what, fn in (("layers", lambda: list(run.layers)), ("stats", run.stat_names),
                     ("channel_stats", run.channel_stat_names), ("hist_kinds", run.hist_kinds)):
        names[what] = _names(_listed(log, p + what, fn, problems), base.get(what, []))
    for attr in ("world_size", "layer_info"):
        _listed(log, p + attr, partial(getattr, run, attr), problems)
    for r in names["ranks"]:
        _read_rank(run, log, p, r, names)
    _read_status(run, log, p)
    log.call(p + "refresh", run.refresh, kind="report")
    log.call(p + "steps_after_refresh", partial(run.steps, names["ranks"][0]) if names["ranks"] else list)
    log.call(p + "close", run.close, kind="report")
    return names


def _base_names(run_dir: str, names: dict) -> dict:
    import tview
    with tview.open_run(run_dir) as run:
        steps = run.steps(run.ranks[0])
        scalars = {str(r): run.scalar_names(r) for r in run.ranks}
    return dict(names, scalars=scalars, mid_step=int(steps[len(steps) // 2]) if len(steps) else 0)


def worker_main(case_id: str, base_dir: str, case_dir: str, seed: int, log_path: str) -> int:
    """Copy the base run, damage it, read it whole: the body of one case's process."""
    import faulthandler
    faulthandler.enable()
    run_dir = os.path.join(case_dir, "run")
    shutil.copytree(os.path.join(base_dir, "run"), run_dir, symlinks=True)
    case = Case.parse(case_id)
    log = ReadLog(log_path, run_dir)
    try:
        log.write({"params": apply(case, run_dir, seed)})
    except Exception as exc:  # noqa: BLE001 - the harness could not make this case: say so, apart from CRASH
        log.write({"setup_error": f"{type(exc).__name__}: {exc}", "done": True})
        return 0
    deadline = float(os.environ.get("TVIEW_FUZZ_STACK_AT", "0"))
    if deadline > 0:  # the Python stack, shortly before the parent's deadline (where a hang hangs)
        faulthandler.dump_traceback_later(deadline, exit=False, file=open(log_path + ".stack", "w"))
    with open(os.path.join(base_dir, "names.json")) as f:
        base = json.load(f)
    found = read_whole(run_dir, log, base)
    if case.cls == "none":
        log.write({"names": _base_names(run_dir, found)})
    log.write({"done": True})
    return 0


# -- classifying (in the parent) -------------------------------------------------------------------------
def load_log(path: str) -> tuple[dict, dict, str | None, bool, dict]:
    """(reads by key, params, the read begun last without an answer, finished, names)."""
    reads, params, begun, done, names = {}, {}, None, False, {}
    if not os.path.exists(path):
        return reads, params, begun, done, names
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if "begin" in e:
                begun = e["begin"]
            elif "key" in e:
                reads[e["key"]] = e
                begun = None
            params = e.get("params", params)
            params = {"setup_error": e["setup_error"]} if "setup_error" in e else params
            names = e.get("names", names)
            done = done or bool(e.get("done"))
    return reads, params, begun, done, names


def _named(msg: str) -> bool:
    return "<RUN>" in msg or ".h5" in msg or MANIFEST in msg


def read_outcome(e: dict, b: dict | None, norm, answers: set = frozenset()) -> str:
    """The outcome of one read of the damaged run, given the same read of the undamaged one (b)."""
    if "err" in e:
        msg = norm(e["msg"])
        if (e["err"], msg) in answers or b is not None and b.get("err") == e["err"] and norm(b.get("msg", "")) == msg:
            return "ok-same"  # the undamaged run's own answer (KeyError: no filters for a Linear layer, ...)
        if e["tview"]:
            return "tview-error" if _named(msg) else "UNNAMED"
        return "FOREIGN"
    if e.get("reported"):
        return "tview-error" if _named(norm(e["reported"])) else "UNNAMED"
    if e["kind"] == "report" or b is None or b.get("ok") == e["ok"]:
        return "ok-same"
    return "SILENT"


def _describe(key: str, e: dict, b: dict | None, outcome: str, norm) -> tuple[str, str]:
    if "err" in e:
        return f"{key} raised {e['err']}", norm(f"{e['err']}: {e['msg']}")
    if outcome == "SILENT":
        was = (b or {}).get("summary") or f"{(b or {}).get('err')}: {(b or {}).get('msg', '')[:200]}"
        return f"{key} returned other data without an error", f"got {e['summary']}; original {was}"
    return f"{key}", norm(e.get("reported") or "")


META_READS = ("open", "ranks", "layers", "world_size", "layer_info", "stats", "channel_stats", "hist_kinds")


def _example_rank(key: str) -> int:
    """Reads of data first, then names and sizes: the example a failing case shows is a data read."""
    return int(key.split("|")[1] in META_READS) if "|" in key else 1


def classify(case: Case, base: dict, log_path: str, rc: int | None, timed_out: bool, deadline: float) -> Result:
    reads, params, begun, done, _ = load_log(log_path)
    case_dir = os.path.dirname(log_path)

    def norm(text):
        return text.replace(os.path.join(case_dir, "run"), "<RUN>")

    res = Result(case.id, case.cls, case.mutation, "ok-same", params=params)
    counts = {o: 0 for o in OUTCOMES}
    answers = {(b["err"], b["msg"]) for b in base.values() if "err" in b}
    worst = 0
    for key, e in sorted(reads.items(), key=lambda item: _example_rank(item[0])):
        outcome = read_outcome(e, base.get(key), norm, answers)
        counts[outcome] += 1
        if OUTCOMES.index(outcome) > worst:
            worst = OUTCOMES.index(outcome)
            res.outcome = outcome
            res.what, res.exception = _describe(key, e, base.get(key), outcome, norm)
    res.counts = {k: v for k, v in counts.items() if v}
    if "setup_error" in params:
        res.outcome, res.what, res.exception = "SETUP", "the harness could not make this case", params["setup_error"]
    elif timed_out:
        res.outcome, res.what = "HANG", f"no answer in {deadline:.0f} s; hung in {begun or 'the mutation/setup'}"
        res.stack = _read_stack(log_path)
    elif not done:
        res.outcome = "CRASH"
        res.what = f"reading process ended with {_rc_text(rc)} during {begun or 'setup'}"
        res.exception = _read_text(log_path + ".err")[-1500:]
    return res


def _rc_text(rc: int | None) -> str:
    if rc is not None and rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _read_stack(log_path: str) -> str:
    text = _read_text(log_path + ".stack")
    lines = [ln for ln in text.splitlines() if "File " in ln and "fuzz.py" not in ln and "threading" not in ln]
    return "\n".join(lines[:8])


def _limit_memory():
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(case: Case, base_dir: str, work: str, seed: int, deadline: float, base_reads: dict,
             keep: bool = False) -> Result:
    """One case in its own process: copy, damage, read whole; killed (process group) at the deadline."""
    case_dir = tempfile.mkdtemp(prefix=case.id + ".", dir=work)
    log_path = os.path.join(case_dir, "reads.jsonl")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TVIEW_FUZZ_STACK_AT=str(max(1.0, deadline - 1.0)))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case.id, "--base", base_dir, "--dir", case_dir,
           "--seed", str(seed)]
    t0 = time.monotonic()
    with open(log_path + ".err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, preexec_fn=_limit_memory)
        timed_out = False
        try:
            rc = proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    res = classify(case, base_reads, log_path, rc, timed_out, deadline)
    res.seconds = round(time.monotonic() - t0, 2)
    if keep:
        res.params["kept"] = os.path.join(case_dir, "run")
    else:
        _cleanup(case_dir)
    return res


def _cleanup(case_dir: str):
    for root, dirs, _ in os.walk(case_dir):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(case_dir, ignore_errors=True)  # with the target m_odd_symlink_outside moved beside run/


def run_cases(cases: list[Case], base_dir: str, work: str, seed: int = 0, deadline: float = 10.0,
              workers: int = 2, progress=None, keep: bool = False) -> list[Result]:
    """Run cases, `workers` processes at a time; results in the cases' order."""
    base_reads = prepare_base(base_dir, work, seed, deadline)
    deadline = effective_deadline(base_dir, deadline)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_case, c, base_dir, work, seed, deadline, base_reads, keep) for c in cases]
        results = []
        for fut in futures:
            results.append(fut.result())
            if progress:
                progress(results[-1])
    return [_hang_confirmed(c, r, base_dir, work, seed, deadline, base_reads, keep) for c, r in zip(cases, results)]


def _hang_confirmed(case: Case, res: Result, base_dir: str, work: str, seed: int, deadline: float, base_reads: dict,
                    keep: bool) -> Result:
    """A HANG run again alone with 3x the deadline: a case slowed by the machine's load (the other worker, other
    jobs) reads in time then; a real hang hangs again and stays a HANG."""
    if res.outcome != "HANG":
        return res
    return run_case(case, base_dir, work, seed, 3 * deadline, base_reads, keep)


def effective_deadline(base_dir: str, deadline: float) -> float:
    """The deadline, raised to 4x the time the undamaged run took to read whole (a busy machine is no HANG)."""
    try:
        with open(os.path.join(base_dir, "base_seconds")) as f:
            return max(deadline, 4 * float(f.read()))
    except (OSError, ValueError):
        return deadline


def prepare_base(base_dir: str, work: str, seed: int, deadline: float) -> dict:
    """The undamaged run's reads (computed once per base, kept beside it), against which cases compare."""
    path = os.path.join(base_dir, "base_reads.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with open(os.path.join(base_dir, "names.json"), "w") as f:
        json.dump({}, f)
    case = Case("none", "none", 0)
    for _ in range(2):  # once to learn the names, once reading over them
        case_dir = tempfile.mkdtemp(prefix="base.", dir=work)
        log_path = os.path.join(case_dir, "reads.jsonl")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.monotonic()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", case.id, "--base", base_dir,
                        "--dir", case_dir, "--seed", str(seed)], env=env, check=True, timeout=max(60, 6 * deadline))
        with open(os.path.join(base_dir, "base_seconds"), "w") as f:
            f.write(f"{time.monotonic() - t0:.2f}")
        reads, _, _, done, names = load_log(log_path)
        if not done:
            raise RuntimeError(f"reading the undamaged run did not finish: {log_path}")
        with open(os.path.join(base_dir, "names.json"), "w") as f:
            json.dump(names, f)
        norm_dir = os.path.join(case_dir, "run")
        shutil.rmtree(case_dir)
    bad = [f"{k}: {e['err']}: {e['msg'][:200]}" for k, e in reads.items() if "err" in e and e["err"] != "KeyError"]
    if any(k.startswith("skip=0|open:") for k in bad) or not reads:
        raise RuntimeError(f"the undamaged run cannot be read: {bad[:3]}")
    if bad:  # compared as they are: the same error on a damaged copy counts as ok-same
        print(f"warning: the undamaged run fails {len(bad)} reads, e.g. {bad[0]}", file=sys.stderr)
    reads = {k: dict(e, msg=e.get("msg", "").replace(norm_dir, "<RUN>")) for k, e in reads.items()}
    with open(path, "w") as f:
        json.dump(reads, f)
    return reads


# -- the base run ----------------------------------------------------------------------------------------
def record_base(base_dir: str, steps: int = 16) -> str:
    """A real 2-rank run of a tiny CNN (two Recorders, rank 0 and 1, in this process), in base_dir/run."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import tview
    torch.set_num_threads(1)
    run_dir = os.path.join(base_dir, "run")
    for rank in (0, 1):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        g = torch.Generator().manual_seed(rank)
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with tview.Recorder(model, run_dir, every=1, snapshot_every=4, preset="full", probe_batch=x[:4],
                            optimizer=opt, rank=rank, world_size=2) as rec:
            for _ in range(steps):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                rec.step(loss=loss, accuracy=(model(x).argmax(1) == y).float().mean())
    return run_dir


# -- report ----------------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    """Markdown: cases per mutation class and outcome, then the totals."""
    classes = sorted({r.cls for r in results})
    lines = ["| class | cases | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for cls in classes + ["all"]:
        rs = [r for r in results if cls in ("all", r.cls)]
        counts = [sum(r.outcome == o for r in rs) for o in OUTCOMES]
        name = "**all**" if cls == "all" else cls
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines)


def by_mutation(results: list[Result]) -> str:
    """One line per mutation with a failing outcome: how many of its cases ended how."""
    groups = {}
    for r in results:
        groups.setdefault(f"{r.cls}-{r.mutation}", []).append(r.outcome)
    lines = []
    for name, outs in sorted(groups.items()):
        if any(o not in GOOD for o in outs):
            lines.append(f"  {name:<34} " + ", ".join(f"{o} {outs.count(o)}" for o in OUTCOMES if o in outs))
    return "\n".join(lines)


def _print_one(r: Result):
    print(f"{r.case}: {r.outcome}  ({r.seconds} s)")
    print(f"  mutation: {json.dumps(r.params)}")
    print(f"  reads:    {r.counts}")
    if r.what:
        print(f"  what:     {r.what}")
    if r.exception:
        print(f"  text:     {r.exception[:2000]}")
    if r.stack:
        print("  stack at the deadline (innermost first):\n" + r.stack)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=10.0, help="seconds a case may take (a HANG past it)")
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2))
    ap.add_argument("--json", help="write the failing cases here")
    ap.add_argument("--only", action="append", help="run only this case id (repeatable)")
    ap.add_argument("--base", help="a folder holding run/ (recorded once, reused); default: record a fresh one")
    ap.add_argument("--keep", help="with --only: keep the damaged copies under this folder (to open them by hand)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main(a.worker, a.base, a.dir, a.seed, os.path.join(a.dir, "reads.jsonl"))
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tview-fuzz.", dir=a.keep)
    try:
        return _main(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def _main(a, work: str) -> int:
    base = a.base or os.path.join(work, "base")
    if not os.path.isdir(os.path.join(base, "run")):
        t0 = time.time()
        record_base(base)
        print(f"recorded the base run in {time.time() - t0:.1f} s: {os.path.join(base, 'run')}", flush=True)
    cases = [Case.parse(c) for c in a.only] if a.only else make_cases(a.cases, a.seed)
    t0 = time.time()
    marks = {"ok-same": ".", "tview-error": "e", "UNNAMED": "u", "SILENT": "S", "FOREIGN": "F", "CRASH": "C",
             "HANG": "H", "SETUP": "?"}
    results = run_cases(cases, base, work, a.seed, a.deadline, a.workers, keep=bool(a.keep),
                        progress=None if a.only else lambda r: print(marks[r.outcome], end="", flush=True))
    if a.only:
        for r in results:
            _print_one(r)
    else:
        deadline = effective_deadline(base, a.deadline)
        print(f"\n\n{len(cases)} cases in {time.time() - t0:.0f} s, seed {a.seed}, deadline {deadline:.0f} s, "
              f"{a.workers} worker processes\n\n{table(results)}\n\nfailing mutations:\n{by_mutation(results)}")
    failing = [dataclasses.asdict(r) for r in results if r.outcome not in GOOD]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(failing, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
