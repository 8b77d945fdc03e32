"""Gram matrices: their result types, their memory check, and their computation in tiles.

A Gram matrix whose entries each depend on their own two inputs (a network without batch
norm) is computed tile by tile: `symmetric_gram` computes the tiles on and above the diagonal
of K(x, x) and mirrors them (exactly symmetric), `blocked_gram` a cross kernel K(x1, x2) in
row blocks. Either shards its tiles over the devices of a one-axis `jax.sharding.Mesh`
(`row_mesh`). The tiling is one step that takes the recursion as a function, so it composes
with any entrywise description (`stax`) and never changes the numerical method.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mimictheory._src import checks
from mimictheory._src.io import progress_bar
from mimictheory._src.precision import f64

__all__ = ["Kernels", "NTKSpectrum", "condition_numbers", "row_mesh", "identical_rows",
           "check_gram_memory", "GRAM_ARRAYS", "tile_edge", "blocked_gram", "symmetric_gram"]


@partial(jax.tree_util.register_dataclass, data_fields=["nngp", "ntk"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Kernels:
  """NNGP kernel K and NTK Θ of the network's (scalar) output, shape (N1, N2) (Θ None where
  only the NNGP was asked for).

  >>> import numpy as np, mimictheory as mt
  >>> k = mt.kernels(np.eye(3), depth=2)
  >>> k.nngp.shape, np.round(np.diag(k.nngp), 6).tolist()   # He's init keeps q = 2|x|²/d
  ((3, 3), [0.666667, 0.666667, 0.666667])
  """

  nngp: jax.Array
  ntk: jax.Array | None


@partial(jax.tree_util.register_dataclass, data_fields=["depths", "eigenvalues", "condition"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class NTKSpectrum:
  """Eigenvalues (ascending) of the NTK Gram matrix for every depth 1..depth, and κ.

  >>> import numpy as np, mimictheory as mt
  >>> s = mt.ntk_spectrum(np.random.default_rng(0).normal(size=(8, 4)), depth=3)
  >>> s.eigenvalues.shape, bool(np.all(s.condition >= 1))
  ((3, 8), True)
  """

  depths: np.ndarray  # (D,)
  eigenvalues: np.ndarray  # (D, N)
  condition: np.ndarray  # (D,) λmax / λmin, ∞ where λmin <= 0 (numerically singular)


def condition_numbers(eig, xp):
  """κ = λmax / λmin per depth, ∞ where λmin <= 0 (numerically singular); xp: np or jnp."""
  lmin, lmax = eig[:, 0], eig[:, -1]
  return xp.where(lmin > 0, lmax / xp.where(lmin > 0, lmin, 1.0), xp.inf)


def row_mesh(devices=None, axis: str = "rows") -> Mesh:
  """A one-dimensional device mesh (all devices by default) to shard Gram rows over.

  >>> import mimictheory as mt
  >>> mesh = mt.row_mesh()
  >>> mesh.axis_names
  ('rows',)
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis,))


def identical_rows(x) -> np.ndarray:
  """(N, N) booleans: rows i and j of x are equal (memory O(N²), not O(N² d))."""
  rows = np.ascontiguousarray(np.asarray(x).reshape(len(x), -1))
  # each row as one opaque value (its bytes): a 1-D unique, much faster than along an axis;
  # +0.0 first, so that -0.0 and 0.0 are the same value as they compare
  rows = rows + 0.0 if rows.dtype.kind == "f" else rows
  keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
  labels = np.unique(keys, return_inverse=True)[1].reshape(-1)
  return labels[:, None] == labels[None, :]


#: float64 N1 × N2 arrays alive at once while a Gram matrix is computed (results, the tiles'
#: assembly, Mehler's series and its bounds): the memory estimate's factor
GRAM_ARRAYS = 8


def check_gram_memory(what: str, n1: int, n2: int, stored: int = 0) -> None:
  """Refuse, before any work, Gram matrices that do not fit (`stored`: N1 × N2 arrays kept per
  layer, as `layer_kernels` keeps one per depth)."""
  arrays = GRAM_ARRAYS + 2 * stored  # the stacked layers, on the device and as NumPy
  need = 8.0 * n1 * n2 * arrays
  hint = ("use fewer inputs, or a smaller depth" if stored else "use fewer inputs"
          + (" (or compute the Gram matrix in blocks of rows with x2)"
             if what == "kernels" else ""))
  checks.check_memory(what, need, f"{n1} x {n2} entries, {arrays} float64 arrays of that size",
                      hint)


#: entries of a Gram matrix (times its spatial entries per pair of inputs) computed per call
ENTRIES_PER_CALL = 1 << 22


def tile_edge(entries_per_pair: int = 1, largest: int = 64) -> int:
  """The edge of a square tile: `largest` (64) for vectors, smaller for images, whose kernels
  hold `entries_per_pair` values per pair of inputs (positions, or pairs of positions), so
  that a tile holds about 4M entries: memory bounded by the tile, not by N².

  >>> from mimictheory._src.gram import tile_edge
  >>> tile_edge(), tile_edge(64), tile_edge(64 * 64)   # vectors, 8×8 flatten, 8×8 pooling
  (64, 64, 32)
  """
  return max(1, min(largest, math.isqrt(ENTRIES_PER_CALL // max(1, entries_per_pair))))


def blocked_gram(block_fn, x1, x2, block_size, mesh, progress, entries_per_pair: int = 1):
  """Cross kernel K(x1, x2) in tiles: blocks of rows of x1 (sharded over `mesh`) against
  blocks of columns of x2 (all of x2 for vectors; images' kernels, `entries_per_pair` values
  per pair, take square tiles so that memory is bounded by the tile);
  `block_fn(x1_block, x2_block)` -> `Kernels` of the tile (the network's entrywise
  recursion)."""
  n1, n2 = x1.shape[0], x2.shape[0]
  cols = n2 if entries_per_pair == 1 else min(n2, tile_edge(entries_per_pair))
  if block_size is None:
    block_size = max(1, min(n1, ENTRIES_PER_CALL // max(cols * entries_per_pair, 1)))
  shards = 1 if mesh is None else mesh.devices.size
  block_size = -(-block_size // shards) * shards  # a multiple of the number of shards
  col_blocks = -(-n2 // cols)
  x2 = _padded(x2, col_blocks * cols)
  x2_dev = [f64(x2[c * cols:(c + 1) * cols]) if mesh is None else
            jax.device_put(f64(x2[c * cols:(c + 1) * cols]), _replicated(mesh))
            for c in range(col_blocks)]
  nngp, ntk = np.empty((n1, n2)), np.empty((n1, n2))
  tiles = [(r, c) for r in range(0, n1, block_size) for c in range(col_blocks)]
  for start, c in progress_bar(tiles, progress, "kernel tiles"):
    block = _padded(x1[start:start + block_size], block_size)
    out = block_fn(sharded(block, mesh), x2_dev[c])
    rows, width = min(block_size, n1 - start), min(cols, n2 - c * cols)
    at = (slice(start, start + rows), slice(c * cols, c * cols + width))
    nngp[at] = np.asarray(out.nngp)[:rows, :width]
    if out.ntk is None:  # the NNGP alone
      ntk = None
    else:
      ntk[at] = np.asarray(out.ntk)[:rows, :width]
  return Kernels(nngp, ntk)


def symmetric_gram(tiles_fn, x, tile, mesh, progress, entries_per_pair: int = 1):
  """K(x, x) from the tiles on and above the diagonal (half the work), tiles batched about 4M
  entries a call and sharded over `mesh`; the result is exactly symmetric. `tiles_fn(x_rows,
  x_cols, on_diagonal)` -> `Kernels` of C square tiles (C, B, B) from their row and column
  inputs (C, B, d), `on_diagonal` (C,) marking the tiles on the diagonal: the tiling is one
  step, composable with any entrywise recursion (a `stax` description's). An NTK of None (the
  NNGP alone) stays None. Images (x of shape (N, H, W, C)) hold `entries_per_pair` spatial
  entries per pair of inputs until their readout: smaller tiles, as many per call."""
  n = x.shape[0]
  if tile is None:  # at least 8 tiles a side, so that small N gains from the symmetry too
    tile = min(tile_edge(entries_per_pair), max(8, -(-n // 8)))
  tile = min(n, tile)
  blocks = -(-n // tile)
  rows, cols = np.triu_indices(blocks)
  shards = 1 if mesh is None else mesh.devices.size
  per_call = min(len(rows), max(1, ENTRIES_PER_CALL // (tile**2 * entries_per_pair)))
  per_call = -(-per_call // shards) * shards
  x_tiles = _padded(np.asarray(x), blocks * tile).reshape(blocks, tile, *x.shape[1:])
  out = np.empty((2, blocks, tile, blocks, tile))
  upper = np.triu(np.ones((tile, tile), dtype=bool))
  for start in progress_bar(range(0, len(rows), per_call), progress, "kernel tiles"):
    r, c = rows[start:start + per_call], cols[start:start + per_call]
    pad = per_call - len(r)  # pad with tile (0, 0): one compiled shape for all calls
    r_in, c_in = np.pad(r, (0, pad)), np.pad(c, (0, pad))
    tiles = tiles_fn(sharded(x_tiles[r_in], mesh), sharded(x_tiles[c_in], mesh),
                     sharded(r_in == c_in, mesh))
    diag = r == c
    for m, values in enumerate((tiles.nngp, tiles.ntk)):
      if values is None:  # the NNGP alone
        continue
      values = np.asarray(values)[:len(r)]
      out[m, c, :, r, :] = np.swapaxes(values, 1, 2)
      out[m, r, :, c, :] = values
      # Diagonal tiles: their upper triangle mirrored, so that K is symmetric to the last bit.
      on = values[diag]
      out[m, r[diag], :, r[diag], :] = np.where(upper, on, np.swapaxes(on, 1, 2))
  full = out.reshape(2, blocks * tile, blocks * tile)[:, :n, :n]
  nngp, ntk = (np.ascontiguousarray(m) for m in full)
  return Kernels(nngp, None if tiles.ntk is None else ntk)


def _padded(x, rows: int):
  """x with zero rows appended up to `rows`."""
  return (
    x if x.shape[0] == rows else np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:])])
  )


def _replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def sharded(a, mesh):
  """`a` as float64 (or bool) on the device(s), its leading axis split over `mesh`."""
  a = jnp.asarray(a) if a.dtype == bool else f64(a)
  if mesh is None:
    return a
  spec = PartitionSpec(mesh.axis_names[0], *([None] * (a.ndim - 1)))
  return jax.device_put(a, NamedSharding(mesh, spec))


