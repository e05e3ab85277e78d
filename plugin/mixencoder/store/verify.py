"""``CheckIndex`` for candidate stores: read every file of a store and report each problem.

:meth:`CandidateStore.open` stays cheap (sizes and ``.npy`` headers against the manifest, no data
read); :func:`verify_store` is the explicit, full pass, as Lucene's ``CheckIndex`` is to opening
an index. It reads every byte once and checks:

* ``manifest.json``: valid JSON, the required keys, and its own checksum (``manifest_sha256``,
  written at every commit; stores written before it existed get a note instead);
* every data file the manifest lists: present, the recorded byte size and sha256, and for
  ``.npy`` files a readable header with the recorded shape and dtype;
* each shard: ``shard.json`` equal to the manifest's entry, ``offsets.npy`` starting at 0,
  non-decreasing and ending at ``total_vectors``, docids non-empty UTF-8, vectors and pooled
  vectors finite, and the FAISS copy (``pooled.faiss``) holding exactly the pooled vectors
  (L2-normalised for a cosine store);
* the lookup index: docids strictly increasing (so unique), each mapped to a row whose shard
  docid is that docid, every row mapped once, ``dead_rows.npy`` empty, counts matching the
  manifest;
* the approximate index (``ann-*``) of the current generation, if any: ``ann.json`` readable,
  ``index.faiss`` of the recorded size and sha256 holding the recorded number of vectors.

Problems are reported by file (a path relative to the store), never raised one at a time, so one
run lists everything that is wrong. Leftovers that do not affect the store (temp directories of
an interrupted write, stale approximate indexes) are notes, not problems. Memory stays bounded:
arrays are read in chunks of :data:`_CHUNK` rows through their memory maps.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from ._io import NPY_HEADER_ERRORS, json_text, sha256_file
from .ann import ANN_PREFIX, INFO_CHECKSUM, info_checksum
from .errors import StoreCorruptError
from .layout import (
    BUILD_STATE,
    INDEX_FILES,
    INDEX_PREFIX,
    MANIFEST,
    MANIFEST_CHECKSUM,
    check_manifest,
    looks_like_store,
    manifest_checksum,
)
from .shard import TMP_PREFIX, l2_normalise, shard_number

logger = logging.getLogger(__name__)

#: Every key a manifest.json / ann.json written by this version (or an earlier one) may hold.
_MANIFEST_KEYS = {
    "format_version", "fingerprint", "count", "rows", "total_vectors", "dim", "pooled_dim",
    "dtype", "shard_size", "search_metric", "shards", "index", "build_docs_per_s",
    "manifest_sha256",
}
_ANN_KEYS = {
    "format_version", "kind", "nlist", "nprobe", "train_size", "seed", "search_metric", "count",
    "index_generation", "rows", "bytes", "sha256", "build_s", "info_sha256",
}
_CHUNK = 1 << 18  # rows read per step (bounds memory whatever the store size)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store.

    Attributes:
        file: the file (or directory) it concerns, relative to the store; ``"."`` for the store.
        message: what is wrong, phrased to follow the file name ("has 10 bytes, ...").
    """

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file} {self.message}"


@dataclass
class VerifyReport:
    """The result of :func:`verify_store`.

    Attributes:
        path: the store directory.
        problems: everything found wrong, in the order checked (empty: the store is sound).
        notes: harmless findings (leftover temp dirs, a stale approximate index, no manifest
            checksum in a store written by an older version).
        files_checked: data files read and hashed.
        bytes_checked: their total size.
        count: live candidates according to the manifest (None if it is unreadable).
    """

    path: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    count: int | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def bad_files(self) -> list[str]:
        """The distinct files named by problems, in order."""
        return list(dict.fromkeys(p.file for p in self.problems))

    def add(self, file: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(file, message))

    def format(self) -> str:
        """Human-readable report, one line per problem (what ``mixencoder store verify`` prints)."""
        lines = [f"{self.path}: {p}" for p in self.problems]
        lines += [f"{self.path}: note: {n}" for n in self.notes]
        if self.ok:
            lines.append(
                f"{self.path}: OK ({self.count} candidates, {self.files_checked} files, "
                f"{self.bytes_checked} bytes verified)"
            )
        else:
            lines.append(
                f"{self.path}: {len(self.problems)} problem(s) in {len(self.bad_files)} file(s); "
                "restore those files or rebuild the store with mode='overwrite'"
            )
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """Raise :class:`StoreCorruptError` listing every problem, if there is any."""
        if self.problems:
            raise StoreCorruptError(
                f"store at {self.path} failed verification: "
                + "; ".join(str(self.path / p.file) + " " + p.message for p in self.problems)
                + ". Restore the files or rebuild the store with mode='overwrite'."
            )


def verify_store(path: str | Path) -> VerifyReport:
    """Read every file of the store at ``path`` and check it against the manifest.

    Args:
        path: a store directory.

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.

    Raises:
        FileNotFoundError: ``path`` does not exist, is not a directory, or holds no store at all
            (neither a manifest nor shard directories).

    Example:
        >>> report = verify_store("work/vaswani/store")  # doctest: +SKIP
        >>> report.ok, report.bad_files  # doctest: +SKIP
        (True, [])
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no candidate store at {path}: it does not exist")
    if not path.is_dir():
        raise FileNotFoundError(
            f"no candidate store at {path}: it is a file, not a store directory"
        )
    report = VerifyReport(path)
    if not (path / MANIFEST).is_file():
        if not looks_like_store(path):
            raise FileNotFoundError(f"{path} is not a candidate store: it has no {MANIFEST}")
        report.add(
            MANIFEST,
            "is missing: the build did not finish (rerun CandidateStore.build with "
            "mode='resume') or the file was deleted",
        )
        return report

    raw = _read_json_file(path, MANIFEST, report)
    if raw is None:
        return report
    recorded = raw.get(MANIFEST_CHECKSUM)
    manifest = {k: v for k, v in raw.items() if k != MANIFEST_CHECKSUM}
    unknown = sorted(set(raw) - _MANIFEST_KEYS)
    if unknown:
        report.add(MANIFEST, f"has unknown keys {unknown} (a damaged key name?)")
    elif recorded is None:
        report.notes.append(
            f"{MANIFEST} has no {MANIFEST_CHECKSUM} (written by an older mixencoder); its own "
            "content cannot be checked, only the files it lists"
        )
    elif recorded != manifest_checksum(manifest):
        report.add(MANIFEST, "does not match its recorded checksum: its content changed")
    try:
        check_manifest(path, manifest)
    except StoreCorruptError as e:
        report.add(MANIFEST, f"is not a valid manifest ({e})")
        return report
    try:
        _verify_layout(path, manifest, report)
        _note_leftovers(path, manifest, report)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # Structurally unexpected manifest content (e.g. a flipped key name) that the checks
        # above did not catch: still one problem naming the manifest, never a traceback.
        report.add(MANIFEST, f"has unexpected content ({type(e).__name__}: {e})")
    report.count = manifest.get("count") if isinstance(manifest.get("count"), int) else None
    logger.info("verified %s: %d problem(s)", path, len(report.problems))
    return report


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _read_json_file(root: Path, rel: str, report: VerifyReport) -> dict[str, Any] | None:
    """Parse a store JSON file; report it if missing, invalid or not byte-identical to the
    canonical text it was written as (so even a change JSON ignores is caught)."""
    try:
        data = (root / rel).read_bytes()
    except FileNotFoundError:
        report.add(rel, "is missing")
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        report.add(rel, f"is not valid JSON ({e})")
        return None
    if not isinstance(obj, dict):
        report.add(rel, f"holds a JSON {type(obj).__name__}, not an object")
        return None
    if json_text(obj).encode("utf-8") != data:
        report.add(rel, "is not byte-identical to the JSON it was written as (it was modified)")
    return obj


def _check_file(root: Path, rel: str, entry: dict[str, Any], report: VerifyReport) -> bool:
    """Presence, size and sha256 of one listed data file; True if its bytes are as recorded."""
    p = root / rel
    if not p.is_file():
        report.add(rel, "is missing (the manifest lists it)")
        return False
    size = p.stat().st_size
    if size != entry.get("bytes"):
        report.add(rel, f"has {size} bytes, expected {entry.get('bytes')} (truncated or modified)")
        return False
    report.files_checked += 1
    report.bytes_checked += size
    if sha256_file(p) != entry.get("sha256"):
        report.add(rel, "has a different sha256 than recorded (content changed)")
        return False
    return True


def _load_npy(root: Path, rel: str, entry: dict[str, Any], report: VerifyReport) -> Any:
    """Memory-map a listed ``.npy`` whose header matches its entry; None (reported) otherwise."""
    try:
        arr = np.load(root / rel, mmap_mode="r")
    except NPY_HEADER_ERRORS as e:
        report.add(rel, f"is not a readable .npy array ({type(e).__name__}: {e})")
        return None
    if list(arr.shape) != list(entry.get("shape", [])) or arr.dtype.str != entry.get("dtype"):
        report.add(
            rel,
            f"holds shape {list(arr.shape)} dtype {arr.dtype.str}, the manifest recorded "
            f"shape {entry.get('shape')} dtype {entry.get('dtype')}",
        )
        return None
    return arr


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, _CHUNK):
        yield lo, min(lo + _CHUNK, n)


# ----------------------------------------------------------------------------------------------
# Shards and the lookup index
# ----------------------------------------------------------------------------------------------


def _verify_layout(path: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    shards = manifest["shards"]
    dtype = np.dtype(manifest["dtype"])
    dim, pooled_dim = manifest["dim"], manifest["pooled_dim"]
    metric = manifest.get("search_metric", "ip")
    shard_docids: list[Any] = []  # per shard: its docids array (or None if unusable)
    starts, row = [], 0
    for entry in shards:
        starts.append(row)
        shard_docids.append(
            _verify_shard(path, entry, dtype, dim, pooled_dim, metric, report)
        )
        row += int(entry["count"])
    rows = row
    if manifest.get("rows", rows) != rows:
        report.add(MANIFEST, f"says rows={manifest.get('rows')}, its shards hold {rows}")
    total = sum(int(e["total_vectors"]) for e in shards)
    if manifest.get("total_vectors", total) != total:
        report.add(
            MANIFEST,
            f"says total_vectors={manifest.get('total_vectors')}, its shards hold {total}",
        )
    _verify_index(path, manifest, shards, shard_docids, np.array(starts, np.int64), rows, report)
    _verify_ann(path, manifest, rows, report)


def _verify_shard(
    root: Path,
    entry: dict[str, Any],
    dtype: np.dtype,
    dim: int,
    pooled_dim: int | None,
    metric: str,
    report: VerifyReport,
) -> Any:
    """Check one shard; return its docids array if readable, else None."""
    name = entry["name"]
    d = root / name
    if not d.is_dir():
        report.add(name, "is missing (the manifest lists this shard)")
        return None
    on_disk = _read_json_file(root, f"{name}/shard.json", report)
    if on_disk is not None:
        if on_disk != entry:
            keys = sorted(k for k in set(on_disk) | set(entry) if on_disk.get(k) != entry.get(k))
            report.add(
                f"{name}/shard.json",
                f"differs from the manifest's entry for this shard (keys {keys})",
            )

    count, total = int(entry["count"]), int(entry["total_vectors"])
    files = entry["files"]
    expected = {
        "vectors.npy": [total, dim],
        "offsets.npy": [count + 1],
        "docids.npy": [count],
    }
    if pooled_dim is not None:
        expected["pooled.npy"] = [count, pooled_dim]
        expected["pooled.faiss"] = None
    arrays: dict[str, Any] = {}
    for fname, shape in expected.items():
        rel = f"{name}/{fname}"
        if fname not in files:
            report.add(MANIFEST, f"does not list {rel}")
            continue
        rec = files[fname]
        if shape is not None and rec.get("shape") != shape:
            report.add(
                MANIFEST,
                f"records {rel} with shape {rec.get('shape')}, inconsistent with the shard's "
                f"count/total_vectors/dim (expected {shape})",
            )
        # Only files whose bytes are as recorded take part in the deeper checks: a damaged
        # file is reported once, by its own name, and never blamed on the files it feeds.
        if _check_file(root, rel, rec, report):
            arrays[fname] = _load_npy(root, rel, rec, report) if fname.endswith(".npy") else (
                root / rel
            )

    offsets = arrays.get("offsets.npy")
    if offsets is not None:
        _verify_offsets(f"{name}/offsets.npy", offsets, total, report)
    docids = arrays.get("docids.npy")
    if docids is not None:
        _verify_docids(f"{name}/docids.npy", docids, report)
    for fname in ("vectors.npy", "pooled.npy"):
        arr = arrays.get(fname)
        if arr is not None and arr.dtype.kind == "f":
            for lo, hi in _chunks(len(arr)):
                if not np.isfinite(np.asarray(arr[lo:hi])).all():
                    report.add(f"{name}/{fname}", f"holds NaN or inf values (rows {lo}..{hi})")
                    break
    if pooled_dim is not None and arrays.get("pooled.faiss") is not None:
        _verify_faiss_copy(
            f"{name}/pooled.faiss", arrays["pooled.faiss"], arrays.get("pooled.npy"), count,
            pooled_dim, entry.get("search_metric", metric), report,
        )
    return docids


def _verify_offsets(rel: str, offsets: np.ndarray, total: int, report: VerifyReport) -> None:
    if len(offsets) == 0:
        report.add(rel, "is empty (expected count + 1 offsets)")
        return
    if int(offsets[0]) != 0 or int(offsets[-1]) != total:
        report.add(rel, f"spans [{offsets[0]}, {offsets[-1]}], expected [0, {total}]")
    for lo, hi in _chunks(len(offsets)):
        block = np.asarray(offsets[max(lo - 1, 0) : hi])
        if (np.diff(block) < 0).any():
            at = max(lo - 1, 0) + int(np.flatnonzero(np.diff(block) < 0)[0])
            report.add(rel, f"decreases at candidate {at} (offsets must be non-decreasing)")
            return


def _verify_docids(rel: str, docids: np.ndarray, report: VerifyReport) -> None:
    if docids.dtype.kind != "S":
        report.add(rel, f"has dtype {docids.dtype.str}, expected fixed-width bytes 'S<n>'")
        return
    for lo, hi in _chunks(len(docids)):
        block = np.asarray(docids[lo:hi])
        empty = np.flatnonzero(np.char.str_len(block) == 0)
        if empty.size:
            report.add(rel, f"holds an empty docid at row {lo + int(empty[0])}")
            return
        for i, key in enumerate(block.tolist()):
            try:
                key.decode("utf-8")
            except UnicodeDecodeError:
                report.add(rel, f"holds a docid that is not UTF-8 at row {lo + i}: {key!r}")
                return


def _verify_faiss_copy(
    rel: str,
    faiss_path: Path,
    pooled: np.ndarray | None,
    count: int,
    pooled_dim: int,
    metric: str,
    report: VerifyReport,
) -> None:
    try:
        index = faiss.read_index(str(faiss_path))
    except RuntimeError as e:
        report.add(rel, f"is not a readable FAISS index ({str(e).strip().splitlines()[-1]})")
        return
    if index.ntotal != count or index.d != pooled_dim:
        report.add(
            rel,
            f"holds {index.ntotal} vectors of dim {index.d}, expected {count} of dim {pooled_dim}",
        )
        return
    if pooled is None:
        return  # pooled.npy is damaged (reported); nothing to compare the copy with
    for lo, hi in _chunks(count):
        copy = index.reconstruct_n(lo, hi - lo)
        want = np.asarray(pooled[lo:hi], dtype=np.float32)
        if metric == "cosine":
            want = l2_normalise(want)
        if not np.allclose(copy, want, rtol=0, atol=1e-5):
            bad = lo + int(np.flatnonzero(~np.isclose(copy, want, rtol=0, atol=1e-5).all(1))[0])
            report.add(rel, f"differs from pooled.npy at candidate {bad} (the FAISS copy is stale)")
            return


def _verify_index(
    root: Path,
    manifest: dict[str, Any],
    shards: list[dict[str, Any]],
    shard_docids: list[Any],
    starts: np.ndarray,
    rows: int,
    report: VerifyReport,
) -> None:
    index = manifest["index"]
    name = index["name"]
    if not (root / name).is_dir():
        report.add(name, "is missing (the manifest lists this lookup index)")
        return
    arrays = {}
    for fname in INDEX_FILES:
        rel = f"{name}/{fname}"
        rec = index["files"].get(fname)
        if rec is None:
            report.add(MANIFEST, f"does not list {rel}")
            continue
        arrays[fname] = (
            _load_npy(root, rel, rec, report) if _check_file(root, rel, rec, report) else None
        )
    keys, live, dead = (arrays.get(f) for f in INDEX_FILES)
    if keys is not None and len(keys) != manifest["count"]:
        report.add(f"{name}/docids_sorted.npy",
                   f"holds {len(keys)} docids, the manifest says count={manifest['count']}")
    if keys is not None:
        for lo, hi in _chunks(len(keys)):
            block = np.asarray(keys[max(lo - 1, 0) : hi])
            bad = np.flatnonzero(block[1:] <= block[:-1])
            if bad.size:
                i = int(bad[0])
                what = "repeats" if block[i + 1] == block[i] else "is out of order"
                report.add(
                    f"{name}/docids_sorted.npy",
                    f"is not strictly increasing: docid {block[i + 1]!r} {what} (at "
                    f"{max(lo - 1, 0) + i + 1}); every docid must map to exactly one row",
                )
                break
    if dead is not None and len(dead):
        report.add(
            f"{name}/dead_rows.npy",
            f"lists {len(dead)} superseded rows (written by add(replace=True) of an earlier "
            "version); this version keeps the file empty and opens no store with superseded "
            "rows: rebuild the store",
        )
    if live is None or keys is None:
        return
    if len(live) != rows:
        report.add(f"{name}/rows_sorted.npy", f"has {len(live)} rows, the shards hold {rows}")
        return
    seen = np.zeros(rows, dtype=bool)
    for lo, hi in _chunks(len(live)):
        r = np.asarray(live[lo:hi])
        if len(r) and (r.min() < 0 or r.max() >= rows):
            report.add(f"{name}/rows_sorted.npy", f"holds rows outside [0, {rows})")
            return
        if seen[r].any():
            report.add(
                f"{name}/rows_sorted.npy",
                "maps two docids to the same row (rows must be unique)",
            )
            return
        seen[r] = True
        # Each docid's row must hold that docid in its shard.
        shard_of = np.searchsorted(starts, r, side="right") - 1
        want = np.asarray(keys[lo:hi])
        for s in np.unique(shard_of):
            stored = shard_docids[s]
            if stored is None:
                continue  # that shard's docids are damaged (reported)
            sel = np.flatnonzero(shard_of == s)
            got = np.asarray(stored[r[sel] - starts[s]])
            mismatch = np.flatnonzero(got != want[sel])  # numpy compares across 'S' widths
            if mismatch.size:
                i = int(sel[mismatch[0]])
                report.add(
                    f"{name}/docids_sorted.npy",
                    f"maps docid {want[i]!r} to row {int(r[i])}, which holds "
                    f"{np.asarray(stored[r[i] - starts[s]])!r} in {shards[s]['name']}",
                )
                return


def _verify_ann(root: Path, manifest: dict[str, Any], rows: int, report: VerifyReport) -> None:
    generation = int(manifest["index"]["generation"])
    current = f"{ANN_PREFIX}{generation:05d}"
    for d in sorted(root.glob(f"{ANN_PREFIX}*")):
        if not d.is_dir():
            continue
        if d.name != current:
            report.notes.append(f"{d.name} is a stale approximate index (rebuild it)")
            continue
        rel = f"{d.name}/ann.json"
        before = len(report.problems)
        info = _read_json_file(root, rel, report)
        if info is None:
            continue
        unknown = sorted(set(info) - _ANN_KEYS)
        if unknown:
            report.add(rel, f"has unknown keys {unknown} (a damaged key name?)")
        elif INFO_CHECKSUM not in info:
            report.notes.append(f"{rel} records no checksum (built by an older mixencoder)")
        elif info[INFO_CHECKSUM] != info_checksum(info):
            report.add(rel, "does not match its recorded checksum: its content changed")
        if len(report.problems) > before:
            continue  # its records cannot be trusted to judge index.faiss
        if info.get("rows") != rows or info.get("index_generation") != generation:
            report.add(rel, f"was built for {info.get('rows')} rows, the store has {rows}")
        irel = f"{d.name}/index.faiss"
        p = d / "index.faiss"
        if not p.is_file():
            report.add(irel, "is missing")
            continue
        if "bytes" in info and p.stat().st_size != info["bytes"]:
            report.add(irel, f"has {p.stat().st_size} bytes, ann.json recorded {info['bytes']}")
            continue
        report.files_checked += 1
        report.bytes_checked += p.stat().st_size
        if "sha256" in info:
            if sha256_file(p) != info["sha256"]:
                report.add(irel, "has a different sha256 than recorded (content changed)")
                continue
        else:
            report.notes.append(f"{rel} records no sha256 (built by an older mixencoder)")
        try:
            index = faiss.read_index(str(p), faiss.IO_FLAG_MMAP)
        except RuntimeError as e:
            report.add(irel, f"is not a readable FAISS index ({str(e).strip().splitlines()[-1]})")
            continue
        if index.ntotal != info.get("count"):
            report.add(irel, f"holds {index.ntotal} vectors, ann.json says {info.get('count')}")


def _note_leftovers(root: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    keep = {e["name"] for e in manifest["shards"]} | {manifest["index"]["name"]}
    for p in sorted(root.iterdir()):
        if p.name.startswith(TMP_PREFIX) or p.name.startswith(".manifest.json.tmp"):
            report.notes.append(f"{p.name} is a leftover of an interrupted write (harmless)")
        elif p.is_dir() and p.name not in keep and (
            shard_number(p.name) is not None or p.name.startswith(INDEX_PREFIX)
        ):
            report.notes.append(f"{p.name} is not listed in the manifest (a leftover; harmless)")
        elif p.name == BUILD_STATE:
            report.notes.append(f"{BUILD_STATE} is a leftover of a build (harmless)")


__all__ = ["Problem", "VerifyReport", "verify_store"]
