"""Gram matrices written to disk tile by tile: larger than memory, resumable, multi-process.

`write_gram(tiles_fn, x1, x2, folder, ...)` computes K(x1, x2) (x2=None: the symmetric
K(x1, x1), from the tiles on and above the diagonal) in square tiles, batches of tiles at a
time, and writes each field (NNGP, NTK) into `folder/<field>.npy`, a NumPy file that
`np.load(path, mmap_mode="r")` opens, in float64 or float32. Memory is bounded by a batch of
tiles: the files are mapped, and the mapped pages are handed back after every batch.

The folder holds:

- `manifest.json`: what is computed (fields, shape, dtype, tile, batch, and the caller's
  parameters: the description and a hash of the inputs). A folder holding another
  computation is refused, naming what differs; the same computation resumes.
- `record-<process>.txt`: one line per finished batch, `batch crc32 line-crc32`, appended
  after the batch's values are flushed to disk (and fsync'ed). A line whose own checksum does
  not match (a damaged record) is ignored, so its batch is computed again; `verify` checks
  the values against the recorded crc32s.
- `lock-<process>`: an exclusive `flock` held while that process writes (released by the
  kernel when it dies), so two runs into one folder are refused rather than interleaved.

The files are allocated in full before any work (`posix_fallocate`): a disk too small is
refused at the start, with the size needed, and not discovered as a crash (SIGBUS) when a
mapped page cannot be written. Batches are fixed by the tiling alone, and each is computed by
the same compiled program however the work is divided, so a resumed computation, and one
divided among processes, ends with the same bits as an uninterrupted one.

Several processes (`jax.distributed.initialize` in each, the folder on a file system they all
see): the batches not yet recorded are divided among them round-robin, each process computing
its share on its own devices and writing into the same files; nobody holds the whole matrix.
Barriers (`multihost_utils.sync_global_devices`) separate the set-up, the reading of the
records and the end, so every process agrees on what is left.
"""
from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mimictheory._src.io import progress_bar

__all__ = ["write_gram", "verify", "diagonal", "FORMAT", "DTYPES"]

FORMAT = 1
DTYPES = ("float64", "float32")


class _Lock:
  """An exclusive, non-blocking `flock` on `path`, or a ValueError naming the folder."""

  def __init__(self, path: Path):
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._fd)
      raise ValueError(f"out: {path.parent} is being written by another run (it holds "
                       f"{path.name}); wait for it to finish or choose another folder"
                       ) from None

  def release(self):
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)


def _crc(arrays) -> int:
  crc = 0
  for a in arrays:
    crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
  return crc


def _line(batch: int, crc: int) -> str:
  body = f"{batch} {crc:08x}"
  return f"{body} {zlib.crc32(body.encode()):08x}\n"


def _parse(line: str):
  """(batch, crc) of a record line, or None for a damaged one."""
  parts = line.split()
  if len(parts) != 3:
    return None
  body = f"{parts[0]} {parts[1]}"
  try:
    if int(parts[2], 16) != zlib.crc32(body.encode()):
      return None
    return int(parts[0]), int(parts[1], 16)
  except ValueError:
    return None


def read_records(folder: Path) -> dict[int, int]:
  """{batch: crc32} of every intact line of every process's record."""
  done = {}
  for path in sorted(folder.glob("record-*.txt")):
    for line in path.read_text(errors="replace").splitlines():
      parsed = _parse(line)
      if parsed is not None:
        done[parsed[0]] = parsed[1]
  return done


def tiling(n1: int, n2: int | None, tile: int, per_call: int):
  """The tiles (rows, cols) of block indices, in order, and their batches of `per_call`
  (x2 None: the blocks on and above the diagonal of the symmetric matrix)."""
  if n2 is None:
    blocks = -(-n1 // tile)
    rows, cols = np.triu_indices(blocks)
  else:
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(-(-n1 // tile)),
                                                  np.arange(-(-n2 // tile)), indexing="ij"))
  starts = range(0, len(rows), per_call)
  return rows, cols, [np.arange(s, min(s + per_call, len(rows))) for s in starts]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key} {a!r} there, {b!r} asked")
  return out


def _allocate(path: Path, shape, dtype) -> None:
  """A .npy file of `shape` with its blocks allocated now (so that a full disk is an error
  here, not a SIGBUS when a mapped page is written), written under a temporary name and
  renamed."""
  tmp = path.with_name(path.name + ".tmp")
  header = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
  offset, size = header.offset, header.nbytes
  del header
  fd = os.open(tmp, os.O_RDWR)
  try:
    os.posix_fallocate(fd, offset, max(size, 1))
  except OSError as e:
    os.close(fd)
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, f"out: could not allocate {size / 1e9:.2f} GB for {path}: "
                           f"{os.strerror(e.errno)}") from None
  os.close(fd)
  os.replace(tmp, path)


def _prepare(folder: Path, manifest: dict, fields, shape, dtype, first: bool) -> None:
  """Check or create the folder's manifest and files (the first process only creates)."""
  path = folder / "manifest.json"
  if path.exists():
    old = json.loads(path.read_text())
    diff = _differences(old, manifest)
    if diff:
      raise ValueError(f"out: {folder} holds another computation ({'; '.join(diff)}); "
                       f"choose another folder, or delete it to start over")
    missing = [f for f in fields if not (folder / f"{f}.npy").exists()]
    if missing:
      raise ValueError(f"out: {folder} has a manifest but not {', '.join(missing)}.npy; "
                       f"delete the folder to start over")
    return
  if not first:
    raise ValueError(f"out: {folder} has no manifest.json (the first process creates it)")
  need = len(fields) * int(np.prod(shape)) * np.dtype(dtype).itemsize
  free = shutil.disk_usage(folder).free
  if need > free:
    raise ValueError(f"out: {folder} needs {need / 1e9:.2f} GB for {len(fields)} "
                     f"{'x'.join(map(str, shape))} {dtype} files, but its disk has "
                     f"{free / 1e9:.2f} GB free")
  try:
    for f in fields:
      _allocate(folder / f"{f}.npy", shape, dtype)
  except OSError as e:
    for f in fields:
      (folder / f"{f}.npy").unlink(missing_ok=True)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise ValueError(f"out: {e.strerror}; nothing was kept in {folder}") from None
    raise
  tmp = path.with_name("manifest.json.tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)  # last: a folder with a manifest has its files


def _barrier(name: str, processes: int) -> None:
  if processes > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"mimictheory.out_of_core.{name}")


def write_gram(tiles_fn: Callable, x1, x2, folder, *, fields=("nngp", "ntk"),
               dtype: str = "float64", tile: int, per_call: int, parameters: dict,
               progress: bool = False, process: int = 0, processes: int = 1
               ) -> dict[str, Path]:
  """Write K(x1, x2) (x2 None: symmetric) into `folder/<field>.npy`; returns the paths.

  `tiles_fn(x_rows, x_cols, on_diagonal)` -> a tuple of arrays (C, tile, tile) per field, for
  C = `per_call` tiles from their inputs (C, tile, ...) and a flag (C,) marking those on the
  diagonal of a symmetric matrix (which it pins). `parameters`: what identifies the
  computation besides the tiling (the description, the inputs' hash). `process`/`processes`:
  this process's index among those sharing the work (jax.process_index/count).
  """
  folder = Path(folder)
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  shape = (n1, n2)
  manifest = dict(format=FORMAT, fields=list(fields), shape=list(shape), dtype=dtype,
                  symmetric=x2 is None, tile=tile, per_call=per_call, parameters=parameters)
  if process == 0:
    folder.mkdir(parents=True, exist_ok=True)
  lock = None
  try:
    if process == 0:
      lock = _Lock(folder / f"lock-{process}")
      _prepare(folder, manifest, fields, shape, dtype, first=True)
    _barrier("prepared", processes)
    if process != 0:
      lock = _Lock(folder / f"lock-{process}")
      _prepare(folder, manifest, fields, shape, dtype, first=False)
    rows, cols, batches = tiling(n1, None if x2 is None else n2, tile, per_call)
    done = read_records(folder)
    _barrier("records read", processes)
    left = [b for b in range(len(batches)) if b not in done]
    mine = left[process::processes]
    _compute(tiles_fn, x1, x2, folder, fields, dtype, tile, per_call, rows, cols, batches,
             mine, process, progress)
    _barrier("finished", processes)
  finally:
    if lock is not None:
      lock.release()
  return {f: folder / f"{f}.npy" for f in fields}


def _tile_inputs(x, blocks, tile: int):
  """The inputs of the given blocks, (C, tile, ...), zero rows past the end."""
  out = np.zeros((len(blocks), tile) + x.shape[1:], dtype=np.float64)
  for i, b in enumerate(blocks):
    part = x[b * tile:(b + 1) * tile]
    out[i, :len(part)] = part
  return out


def _compute(tiles_fn, x1, x2, folder, fields, dtype, tile, per_call, rows, cols, batches,
             mine, process, progress):
  maps = [np.load(folder / f"{f}.npy", mmap_mode="r+") for f in fields]
  n1, n2 = maps[0].shape
  symmetric = x2 is None
  xc = x1 if symmetric else x2
  upper = np.triu(np.ones((tile, tile), dtype=bool))
  record = open(folder / f"record-{process}.txt", "a")  # noqa: SIM115 (closed below)
  try:
    for b in progress_bar(mine, progress, "kernel tiles (to disk)"):
      idx = batches[b]
      r, c = rows[idx], cols[idx]
      pad = per_call - len(idx)  # one compiled shape for every batch
      r_in, c_in = np.pad(r, (0, pad)), np.pad(c, (0, pad))
      on_diagonal = (r_in == c_in) if symmetric else np.zeros(per_call, dtype=bool)
      values = tiles_fn(_tile_inputs(x1, r_in, tile), _tile_inputs(xc, c_in, tile), on_diagonal)
      written = []
      for m, v in zip(maps, values, strict=True):
        v = np.asarray(v)[:len(idx)].astype(dtype)
        if not np.isfinite(v).all():
          raise ValueError(f"the kernel overflows {dtype} in tiles {list(zip(r, c))} "
                           f"(blocks of {tile} inputs); use a smaller depth or sw2, or "
                           f"float64")
        for (i, j), t in zip(zip(r, c, strict=True), v, strict=True):
          h, w = min(tile, n1 - i * tile), min(tile, n2 - j * tile)
          if symmetric and i == j:  # the upper triangle mirrored: symmetric to the last bit
            t = np.where(upper, t, t.T)
          m[i * tile:i * tile + h, j * tile:j * tile + w] = t[:h, :w]
          if symmetric and i != j:
            m[j * tile:j * tile + w, i * tile:i * tile + h] = t[:h, :w].T
          written.append(t[:h, :w])
      for m in maps:
        m.flush()
        _release(m)
      record.write(_line(b, _crc(written)))
      record.flush()
      os.fsync(record.fileno())
  finally:
    record.close()
    del maps


def _release(m) -> None:
  """Hand the flushed pages of a memory map back (they stay in the page cache and on disk),
  so that the resident memory stays that of one batch."""
  raw = getattr(m, "_mmap", None)
  if raw is not None and hasattr(raw, "madvise"):
    raw.madvise(mmap.MADV_DONTNEED)


def diagonal(path) -> np.ndarray:
  """The diagonal of a square .npy matrix, read entry by entry (`pread`): through a memory map
  each entry's page fault would bring its neighbours along (fault-around, read-ahead), about
  64 KB per row, so 3 GB of resident pages at N = 50,000 for 200 KB of values."""
  with open(path, "rb") as handle:
    major, _ = np.lib.format.read_magic(handle)
    read = (np.lib.format.read_array_header_1_0 if major == 1 else
            np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(handle)
    offset = handle.tell()
    n = shape[0]
    stride = (n + 1) * dtype.itemsize
    fd = handle.fileno()
    raw = b"".join(os.pread(fd, dtype.itemsize, offset + i * stride) for i in range(n))
  return np.frombuffer(raw, dtype=dtype).astype(np.float64)


def verify(folder) -> list[int]:
  """The batches whose values on disk no longer match their recorded crc32 (an empty list:
  every recorded batch is intact)."""
  folder = Path(folder)
  manifest = json.loads((folder / "manifest.json").read_text())
  maps = [np.load(folder / f"{f}.npy", mmap_mode="r") for f in manifest["fields"]]
  n1, n2 = manifest["shape"]
  tile = manifest["tile"]
  rows, cols, batches = tiling(n1, None if manifest["symmetric"] else n2, tile,
                               manifest["per_call"])
  bad = []
  for b, crc in sorted(read_records(folder).items()):
    if b >= len(batches):
      bad.append(b)
      continue
    parts = []
    for m in maps:
      for i, j in zip(rows[batches[b]], cols[batches[b]], strict=True):
        parts.append(np.asarray(m[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]))
    if _crc(parts) != crc:
      bad.append(b)
  return bad

