"""Float64 for the theory, whatever the user's global JAX setting.

The theory modules never flip `jax_enable_x64` globally: each public entry point runs inside
`jax.enable_x64(True)`, a thread-local context, and returns NumPy float64 arrays, which keep
their precision in any later arithmetic (a JAX float64 array would be truncated to float32 by
the first operation outside the context). Jitted functions are cached per x64 state, so a
float32 training loop in the same process is neither changed nor recompiled by the theory.

Called on tracers (under a user's `jit`, `grad` or `vmap`), the wrapped functions trace their
computation in float64 too and return JAX arrays in the caller's default float dtype: float64
with x64 on; otherwise computed in float64 and rounded once to float32 at the end, so that the
result mixes with the caller's arrays without a truncation warning (`_traced_in_float64`).
Called on concrete values while some transformation is tracing (e.g. a model's initial σw²
computed inside `nnx.eval_shape` or `nnx.jit`), they still compute eagerly
(`jax.ensure_compile_time_eval`) and return NumPy values.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["float64", "f64", "to_numpy", "concrete_only", "is_traced"]


def to_numpy(tree):
  """Every JAX array in `tree` as a NumPy array."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a) if isinstance(a, jax.Array) else a, tree)


def is_traced(*values) -> bool:
  """Any JAX tracer among `values` (pytrees allowed): a transformation is tracing them."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def _as_dtype(tree, dtype):
  """Every float64 JAX array in `tree` cast to `dtype`."""
  def cast(a):
    float64_array = isinstance(a, (jax.Array, np.ndarray, np.float64)) and a.dtype == np.float64
    return jnp.asarray(a, dtype) if float64_array else a
  return jax.tree_util.tree_map(cast, tree)


def float64(fn):
  """Decorator: run `fn` with 64-bit JAX types (thread-locally) and return NumPy arrays.

  On traced arguments `fn` is traced in float64 and its float results come back as JAX arrays
  of the caller's default float dtype, so it composes with `jit`, `vmap` and `grad`.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if is_traced(args, kwargs):
      if jnp.result_type(float) == jnp.float64:  # x64 already on: trace as it is
        return fn(*args, **kwargs)
      return _traced_in_float64(fn, args, kwargs)
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
      return to_numpy(fn(*args, **kwargs))

  return wrapper


def concrete_only(fn):
  """Decorator for functions that need concrete values (grids, searches, data-dependent
  quadrature): a clear TypeError on traced arguments instead of a tracer-conversion error."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if is_traced(args, kwargs):
      raise TypeError(f"{fn.__name__} takes concrete values only and cannot be traced "
                      "(jit/grad/vmap); call it outside the transformation. Traceable: kernels, "
                      "layer_kernels, ntk_spectrum, chi1, qstar, correlation_map, "
                      "correlation_slope, covariance_map, variance_map, stable_correlation, "
                      "depth_scales, stable_sw2")
    return fn(*args, **kwargs)

  return wrapper


def _traced_in_float64(fn, args, kwargs):
  """`fn` on traced arguments with x64 off: traced in float64 with float32 results.

  The backward pass of `grad` is traced after `fn` returns, in the caller's (32-bit) context,
  where a transpose rule that makes a float64 constant would fail; a custom VJP keeps it in
  the float64 context too. Reverse mode (grad, vjp), jit and vmap work; forward mode (jvp,
  jacfwd) needs x64 on (`jax.config.update("jax_enable_x64", True)`), where `fn` is traced
  directly.
  """
  leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
  where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.core.Tracer)]

  def call(*traced):
    full = list(leaves)
    for i, value in zip(where, traced):
      full[i] = value
    a, k = jax.tree_util.tree_unflatten(treedef, full)
    return _as_dtype(fn(*a, **k), jnp.float32)

  @jax.custom_vjp
  def run(*traced):
    with jax.enable_x64(True):
      return call(*traced)

  def forward(*traced):
    with jax.enable_x64(True):
      return jax.vjp(call, *traced)

  def backward(pullback, cotangent):
    with jax.enable_x64(True):
      return pullback(cotangent)

  run.defvjp(forward, backward)
  return run(*(leaves[i] for i in where))


def f64(x) -> jax.Array:
  """`x` as a float64 JAX array (call inside a `float64` context)."""
  return jnp.asarray(x, dtype=jnp.float64)
