"""Float64 for the theory, whatever the user's global JAX setting.

The theory modules never flip `jax_enable_x64` globally: each public entry point runs inside
`jax.enable_x64(True)`, a thread-local context, and returns NumPy float64 arrays, which keep
their precision in any later arithmetic (a JAX float64 array would be truncated to float32 by
the first operation outside the context). Jitted functions are cached per x64 state, so a
float32 training loop in the same process is neither changed nor recompiled by the theory.
Called on tracers (inside a user's or the library's own `jit`), the wrapped functions run
unchanged and return tracers. Called on concrete values while some transformation is tracing
(e.g. a model's initial σw² computed inside `nnx.eval_shape` or `nnx.jit`), they still compute
eagerly (`jax.ensure_compile_time_eval`) and return NumPy values.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["float64", "f64", "to_numpy"]


def to_numpy(tree):
  """Every JAX array in `tree` as a NumPy array."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a) if isinstance(a, jax.Array) else a, tree)


def _traced(args, kwargs) -> bool:
  leaves = jax.tree_util.tree_leaves((args, kwargs))
  return any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def float64(fn):
  """Decorator: run `fn` with 64-bit JAX types (thread-locally) and return NumPy arrays.

  On traced arguments `fn` runs as it is, so it composes with `jit`, `vmap` and `grad`.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if _traced(args, kwargs):
      return fn(*args, **kwargs)
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
      return to_numpy(fn(*args, **kwargs))

  return wrapper


def f64(x) -> jax.Array:
  """`x` as a float64 JAX array (call inside a `float64` context)."""
  return jnp.asarray(x, dtype=jnp.float64)
