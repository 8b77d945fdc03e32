"""Float64 for the theory, whatever the user's global JAX setting.

The theory modules never flip `jax_enable_x64` globally: each public entry point runs inside
`jax.enable_x64(True)`, a thread-local context. Jitted functions are cached per x64 state, so a
float32 training loop in the same process is neither changed nor recompiled by the theory.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["float64", "f64"]


def float64(fn):
  """Decorator: run `fn` with 64-bit JAX types enabled (thread-locally)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)

  return wrapper


def f64(x) -> jax.Array:
  """`x` as a float64 JAX array (call inside a `float64` context)."""
  return jnp.asarray(x, dtype=jnp.float64)
