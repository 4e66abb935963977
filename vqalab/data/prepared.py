"""Prepared splits kept on disk, so a second load of unchanged files skips parsing and scoring.

A loader that spends its time turning the official JSON files into arrays (VQA v2, GQA) stores
those arrays in one ``.npz`` entry under ``vqalab.paths.cache_dir()/prepared/``:

- the entry's file name comes from the data set, its root and the builder arguments that shape
  the arrays, so a rebuild replaces the old entry instead of adding one;
- the entry holds its key: the format version, each input file's resolved path, size and
  modification time (``file_fingerprint``; no content digest, which would cost a full read of
  the JSON files on every load), and a SHA-256 of the source files of the preparing code
  (``code_digest``) with the loader's own version number. A key that differs from the one asked
  for means the entry is stale: it is rebuilt;
- it also holds a SHA-256 of every array's name, dtype, shape and bytes, checked on every read:
  a damaged or truncated entry is ignored (a warning says so) and rebuilt, never used;
- it is read with ``allow_pickle=False``: only plain arrays, never unpickled objects. Strings
  travel as JSON bytes (``strings_array``), ragged lists as flat arrays and offsets (``Ragged``);
- it is written with ``io.write_atomically``, so a reader never sees half an entry.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import io
import itertools
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vqalab.io import json_digest, write_atomically
from vqalab.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the entry layout below changes
KEY_ARRAY = "__key__"  # JSON of the key, as uint8
DIGEST_ARRAY = "__sha256__"  # SHA-256 (hex, as uint8) of every other array


def file_fingerprint(paths: Sequence[Path]) -> list[list]:
    """[resolved path, size, modification time in ns] of each file: changes when a file is rewritten."""
    rows = []
    for path in paths:
        stat = path.stat()
        rows.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


@functools.cache
def code_digest(*module_files: str) -> str:
    """SHA-256 of the given source files (path name and bytes): changes when the preparing code does."""
    digest = hashlib.sha256()
    for name in module_files:
        path = Path(name)
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def paused_gc():
    """The cyclic garbage collector paused: parsing a full-size JSON file makes millions of
    containers, and each collection would walk them all again (none of them is garbage yet)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def strings_array(strings: Sequence[str]) -> np.ndarray:
    """A list of strings as uint8 JSON bytes (an array ``np.load`` reads without pickle)."""
    return np.frombuffer(json.dumps(list(strings), ensure_ascii=False).encode(), dtype=np.uint8)


def strings_of(array: np.ndarray) -> list[str]:
    return json.loads(array.tobytes().decode())


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name] if arrays[name].flags.c_contiguous else np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def entry_path(dataset: str, parts) -> Path:
    """Where the entry of ``dataset`` for ``parts`` (root, builder arguments) lives."""
    name = json_digest(parts, length=16)
    return cache_dir() / "prepared" / f"{dataset}-{name}.npz"


def load_entry(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path`` under exactly ``key``; None when absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        stored_key = json.loads(arrays.pop(KEY_ARRAY).tobytes().decode())
        stored_digest = arrays.pop(DIGEST_ARRAY).tobytes().decode()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        log.warning("prepared data %s is unreadable (%s): rebuilding it", path, err)
        return None
    if stored_key != {**key, "format": FORMAT_VERSION}:
        log.info("prepared data %s was made from other files or code: rebuilding it", path)
        return None
    if arrays_digest(arrays) != stored_digest:
        log.warning("prepared data %s fails its checksum: rebuilding it", path)
        return None
    return arrays


def store_entry(path: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` with ``key`` and their checksum to ``path`` (atomically; uncompressed: fast to read)."""
    payload = dict(arrays)
    payload[DIGEST_ARRAY] = np.frombuffer(arrays_digest(payload).encode(), dtype=np.uint8)
    payload[KEY_ARRAY] = np.frombuffer(json.dumps({**key, "format": FORMAT_VERSION}).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    try:
        write_atomically(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as err:  # a cache that cannot be written only costs the next load its time
        log.warning("prepared data %s could not be written (%s); the next load prepares the files again", path, err)


class Ragged(Sequence):
    """Rows of different lengths as one flat array and offsets: row i is ``flat[offsets[i]:offsets[i+1]]``.

    flat: (total,) values. offsets: (rows + 1,) int64, starting at 0. Rows read back as Python lists
    (``table``: strings looked up by the stored codes), so the ragged lists of a big split cost two
    arrays instead of one Python list per row.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, table: Sequence[str] | None = None):
        self.flat, self.offsets, self.table = flat, offsets, table

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]], dtype=np.int32, table: Sequence[str] | None = None) -> Ragged:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
        return cls(flat, offsets, table)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        values = self.flat[self.offsets[index]:self.offsets[index + 1]].tolist()
        return values if self.table is None else [self.table[v] for v in values]

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Ragged:
        """The given rows (int array), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Output position j of row r reads flat[starts[r] + (j - offsets[r])].
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Ragged(self.flat[positions], offsets, self.table)


class Coded(Sequence):
    """A list of strings from few distinct values, stored as codes into a table (answer types, …)."""

    def __init__(self, codes: np.ndarray, table: Sequence[str]):
        self.codes, self.table = codes, table

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.table[c] for c in self.codes[index].tolist()]
        return self.table[int(self.codes[index])]

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class StringTable:
    """Each distinct string once (the human answers repeat millions of times): string ↔ code.

    Equal codes mean equal strings, so the answers of a whole split compare as integer arrays.
    """

    def __init__(self, strings: list[str] | None = None):
        self.strings: list[str] = list(strings or [])
        self.codes: dict[str, int] = {s: i for i, s in enumerate(self.strings)}

    def code(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            code = self.codes[text] = len(self.strings)
            self.strings.append(text)
        return code

    def codes_of(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) int32 codes, new strings added in order of first appearance."""
        for text in dict.fromkeys(texts):
            self.code(text)
        return np.fromiter(map(self.codes.__getitem__, texts), dtype=np.int32, count=len(texts))
