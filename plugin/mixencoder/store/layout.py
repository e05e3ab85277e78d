"""A store directory's metadata: the build parameters, ``manifest.json`` and the one commit.

Every writer (:meth:`CandidateStore.build`, :meth:`~CandidateStore.from_shards`,
:meth:`~CandidateStore.add` and the Ray build) first writes complete shard directories, then
calls :func:`commit`: it writes the docid lookup index for all the shards and replaces
``manifest.json`` atomically. The manifest is the commit point: a directory without one is an
unfinished build, and readers only ever see the shards a manifest lists.

On-disk layout (every data file is listed, with size and sha256, in ``manifest.json``)::

    store/
      manifest.json        written last; its presence means "the store is complete"
      build.json           the parameters of a build in progress (lets resume check them)
      shard-00000/         see mixencoder.store.shard for the files of one shard
      index-00000/         docid lookup over all shards, rewritten at every commit
        docids_sorted.npy  (count,) 'S<n>'  every docid, sorted bytewise
        rows_sorted.npy    (count,) int64   its global row (shard start + row in shard)
        dead_rows.npy      (0,) int64       always empty (format version 1 keeps the file)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_json, fsync_dir, fsync_file, json_text, npy_entry, read_json
from .errors import StoreCorruptError
from .shard import TMP_PREFIX, check_search_metric, shard_number

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Key of manifest.json holding the sha256 of the rest of the manifest (see manifest_checksum).
MANIFEST_CHECKSUM = "manifest_sha256"
BUILD_STATE = "build.json"
INDEX_PREFIX = "index-"
INDEX_FILES = ("docids_sorted.npy", "rows_sorted.npy", "dead_rows.npy")
DTYPES = ("float16", "float32")
SHOW_IDS = 5  # how many offending docids an error message names
_REQUIRED_KEYS = ("format_version", "fingerprint", "count", "dim", "pooled_dim", "dtype",
                  "shard_size", "shards", "index")


@dataclass(frozen=True)
class BuildParams:
    """What determines a store's shards besides the corpus; a resume must repeat all of it.

    Written as ``build.json`` while a build runs and recorded in ``manifest.json``.
    """

    fingerprint: dict[str, Any]
    shard_size: int
    dtype: str
    with_pooled: bool
    search_metric: str

    @classmethod
    def checked(
        cls,
        fingerprint: Any,
        *,
        shard_size: Any,
        dtype: Any,
        with_pooled: Any,
        search_metric: Any,
    ) -> BuildParams:
        """Validate the arguments of a build and normalise them as the manifest stores them."""
        check_positive_int("shard_size", shard_size)
        return cls(
            fingerprint=normalise_fingerprint(fingerprint),
            shard_size=int(shard_size),
            dtype=check_dtype(dtype),
            with_pooled=bool(with_pooled),
            search_metric=check_search_metric(search_metric),
        )

    @classmethod
    def for_model(
        cls, model: Any, shard_size: Any, dtype: Any, with_pooled: Any, search_metric: Any
    ) -> BuildParams:
        """:meth:`checked` for a build by ``model``: its ``candidate_fingerprint()``, and its
        ``search_metric`` where ``search_metric`` is None."""
        return cls.checked(
            model.candidate_fingerprint(),
            shard_size=shard_size,
            dtype=dtype,
            with_pooled=with_pooled,
            search_metric=model.search_metric if search_metric is None else search_metric,
        )

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> BuildParams:
        """The parameters a finished store was built with."""
        return cls(
            fingerprint=manifest["fingerprint"],
            shard_size=manifest["shard_size"],
            dtype=manifest["dtype"],
            with_pooled=manifest["pooled_dim"] is not None,
            search_metric=manifest.get("search_metric", "ip"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``build.json``."""
        return asdict(self)

    def check_resumes(self, path: Path, previous: dict[str, Any]) -> None:
        """Raise unless ``previous`` (the interrupted build's parameters) equals these."""
        params = self.as_dict()
        diff = [k for k in params if previous.get(k) != params[k]]
        if not diff:
            return
        if "fingerprint" in diff:
            raise ValueError(
                f"cannot resume the build at {path}: it was started by a different model "
                "(candidate fingerprints differ). Use the same model, or mode='overwrite'."
            )
        was = ", ".join(f"{k}={previous.get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={params[k]!r}" for k in diff)
        raise ValueError(
            f"cannot resume the build at {path}: it was started with {was}, now called with "
            f"{now}. Pass the original arguments, or mode='overwrite' to start over."
        )


def normalise_fingerprint(fingerprint: Any) -> dict[str, Any]:
    """A ``candidate_fingerprint()`` dict as the manifest stores it (tuples become lists)."""
    if not isinstance(fingerprint, dict):
        raise TypeError(
            f"candidate_fingerprint() must return a dict, got {type(fingerprint).__name__}"
        )
    try:
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"candidate_fingerprint() must be JSON-serialisable: {e}") from e
    if "sha256" not in fingerprint:
        raise ValueError(
            f"a candidate fingerprint needs a 'sha256' key (got keys {sorted(fingerprint)}); "
            "without it the store cannot tell models apart"
        )
    return fingerprint


def check_positive_int(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_dtype(dtype: Any) -> str:
    """The name of a store dtype (``"float16"`` or ``"float32"``)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


# ----------------------------------------------------------------------------------------------
# manifest.json
# ----------------------------------------------------------------------------------------------


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON text of ``manifest`` without its own checksum key.

    Written into ``manifest.json`` under :data:`MANIFEST_CHECKSUM` at every commit, so that
    :func:`mixencoder.store.verify.verify_store` can tell a changed manifest from a valid one
    (the data files' sha256 live inside the manifest and cannot vouch for it).
    """
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json_text(body).encode("utf-8")).hexdigest()


def read_manifest(path: Path) -> Any:
    """Parse ``path/manifest.json``; the checksum key is dropped (only verify uses it)."""
    manifest = read_json(path / MANIFEST)
    if isinstance(manifest, dict):
        manifest.pop(MANIFEST_CHECKSUM, None)
    return manifest


def check_manifest(path: Path, manifest: Any) -> None:
    """Raise :class:`StoreCorruptError` unless ``manifest`` has this format's required keys."""
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED_KEYS):
        raise StoreCorruptError(
            f"{path / MANIFEST} lacks required keys {list(_REQUIRED_KEYS)}; it is corrupt or "
            "not a candidate store manifest. Rebuild the store."
        )
    if manifest["format_version"] != FORMAT_VERSION:
        raise StoreCorruptError(
            f"store at {path} has format_version {manifest['format_version']}, this mixencoder "
            f"reads version {FORMAT_VERSION}; rebuild the store with this version."
        )
    if manifest.get("search_metric", "ip") not in ("ip", "cosine"):
        raise StoreCorruptError(
            f"{path / MANIFEST} has search_metric {manifest['search_metric']!r}, not 'ip' or "
            "'cosine'; it is corrupt. Rebuild the store."
        )


def manifest_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of the manifest: a commit (os.replace) always changes the inode."""
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_shard_entry(path: Path, name: str) -> dict[str, Any]:
    """The ``shard.json`` of a finished shard directory."""
    entry_path = path / name / "shard.json"
    if not entry_path.is_file():
        raise StoreCorruptError(f"{entry_path} is missing; the shard is damaged. Rebuild.")
    return read_json(entry_path)


# ----------------------------------------------------------------------------------------------
# The commit
# ----------------------------------------------------------------------------------------------


def commit(
    path: Path,
    params: BuildParams,
    entries: list[dict[str, Any]],
    *,
    docs_per_s: float | None,
) -> dict[str, Any]:
    """Make the finished shards ``entries`` (in row order) the store at ``path``; return its
    manifest.

    Writes the lookup index of the next generation, then ``manifest.json`` (the commit point),
    then removes ``build.json`` and every shard or index directory the new manifest does not
    list. ``docs_per_s=None`` keeps the throughput the previous manifest recorded.

    Raises:
        ValueError: no shards, or a docid held by more than one row (naming the docids and
            the shards holding them); nothing is committed then.
    """
    if not entries:
        (path / BUILD_STATE).unlink(missing_ok=True)
        raise ValueError(f"the corpus yielded no (docid, text) pairs; nothing to store at {path}")
    previous = read_manifest(path) if (path / MANIFEST).is_file() else None
    generation = 0 if previous is None else previous["index"]["generation"] + 1
    if docs_per_s is None and previous is not None:
        docs_per_s = previous.get("build_docs_per_s")
    try:
        keys = np.concatenate(
            [np.load(path / e["name"] / "docids.npy", mmap_mode="r") for e in entries]
        )
        index = _write_index(path, generation, keys, entries)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": params.fingerprint,
            "count": len(keys),
            "rows": len(keys),
            "total_vectors": sum(e["total_vectors"] for e in entries),
            "dim": entries[0]["dim"],
            "pooled_dim": entries[0]["pooled_dim"] if params.with_pooled else None,
            "dtype": params.dtype,
            "shard_size": params.shard_size,
            "search_metric": params.search_metric,
            "shards": entries,
            "index": index,
            "build_docs_per_s": docs_per_s,
        }
        atomic_write_json(
            path / MANIFEST, {**manifest, MANIFEST_CHECKSUM: manifest_checksum(manifest)}
        )
    except BaseException:
        # E.g. a full disk: the finished shards stay (for a resume), temp dirs go.
        remove_temp_dirs(path)
        raise
    (path / BUILD_STATE).unlink(missing_ok=True)
    remove_unreferenced(path, manifest)
    return manifest


def _write_index(
    root: Path, generation: int, keys: np.ndarray, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write ``index-<generation>/`` (sorted docids -> rows) atomically; return its entry."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    _check_unique(root, sorted_keys, order, entries)
    name = f"{INDEX_PREFIX}{generation:05d}"
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    for stale in (final, tmp):  # never the live index: that one has a lower generation
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    arrays = dict(zip(INDEX_FILES, (sorted_keys, order.astype(np.int64), np.zeros(0, np.int64))))
    files = {}
    for fname, arr in arrays.items():
        np.save(tmp / fname, arr)
        fsync_file(tmp / fname)
        files[fname] = npy_entry(tmp / fname)
    fsync_dir(tmp)
    tmp.rename(final)
    fsync_dir(root)
    return {"name": name, "generation": generation, "files": files}


def _check_unique(
    path: Path, sorted_keys: np.ndarray, order: np.ndarray, entries: list[dict[str, Any]]
) -> None:
    """Raise naming the docids held by more than one row, and the shards holding them."""
    repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not repeated.size:
        return
    bounds = np.cumsum([0] + [int(e["count"]) for e in entries])
    names = np.unique(sorted_keys[repeated])
    examples = []
    for key in names[:SHOW_IDS]:
        lo = int(np.searchsorted(sorted_keys, key, side="left"))
        hi = int(np.searchsorted(sorted_keys, key, side="right"))
        shards = [
            entries[int(np.searchsorted(bounds, r, side="right")) - 1]["name"]
            for r in order[lo:hi]
        ]
        examples.append(f"{key.decode()!r} in {', '.join(shards)}")
    raise ValueError(
        f"{len(names)} docids occur more than once across the shards of {path}, e.g. "
        + "; ".join(examples)
        + ". Deduplicate the corpus and rebuild."
    )


# ----------------------------------------------------------------------------------------------
# What a directory holds, and leftovers
# ----------------------------------------------------------------------------------------------


def looks_like_store(path: Path) -> bool:
    """True if ``path`` holds a store or the remains of a store build."""
    if (path / MANIFEST).exists() or (path / BUILD_STATE).exists():
        return True
    return any(shard_number(p.name) is not None for p in path.iterdir() if p.is_dir())


def remove_temp_dirs(path: Path) -> None:
    """Delete the hidden temp directories of interrupted shard or index writes."""
    for p in path.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            logger.debug("removing leftover temp dir %s", p)
            shutil.rmtree(p, ignore_errors=True)


def remove_unreferenced(path: Path, manifest: dict[str, Any]) -> None:
    """Delete shard/index dirs the manifest does not list (leftovers of failed writes)."""
    keep = {e["name"] for e in manifest["shards"]} | {manifest["index"]["name"]}
    for p in path.iterdir():
        unref = p.is_dir() and p.name not in keep and (
            shard_number(p.name) is not None or p.name.startswith(INDEX_PREFIX)
        )
        if unref or (p.is_dir() and p.name.startswith(TMP_PREFIX)):
            logger.debug("removing unreferenced %s", p)
            shutil.rmtree(p, ignore_errors=True)
