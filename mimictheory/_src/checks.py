"""Argument validation: every message names the parameter and the allowed range.

Under a JAX transformation (`jit`, `grad`, `vmap`) an argument may be a tracer, whose values
are unknown until run time: then only its type and shape are checked, and the value checks are
left out (a traced function cannot raise on a value). The plain call checks everything.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from mimictheory._src.precision import is_traced

__all__ = [
    "check_choice", "check_positive", "check_nonnegative", "check_int", "check_interval",
    "check_data", "check_fan_in", "is_traced", "available_memory", "check_memory",
]


def available_memory() -> int:
  """Bytes the computation may use: the first device's limit on an accelerator, else the host's
  available memory (MemAvailable, or the physical memory where /proc/meminfo is missing)."""
  import jax
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as fh:
      for line in fh:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  import os
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(what: str, need: float, detail: str, hint: str) -> None:
  """Refuse, before any work, a computation estimated to need more memory than there is:
  ValueError naming the estimate (`detail` says what it counts) and a way out (`hint`)."""
  have = 0.9 * available_memory()  # the rest for the interpreter, XLA and the OS
  if need > have:
    raise ValueError(f"{what} would need about {_bytes(need)} ({detail}), more than the "
                     f"{_bytes(have)} available here; {hint}")


def _bytes(n: float) -> str:
  for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
    if n >= size:
      return f"{n / size:.3g} {unit}"
  return f"{n / 1e3:.3g} kB"


def _check_traced(name: str, value):
  """The checks a tracer allows: a real numeric dtype."""
  kind = np.dtype(value.dtype).kind
  if kind == "c":
    raise TypeError(f"{name} must be real; got complex values (pass the real part explicitly)")
  if kind not in "fiub":
    raise TypeError(f"{name} must be a number or an array of numbers, got dtype {value.dtype}")
  return value


def _as_float_array(name: str, value) -> np.ndarray:
  if isinstance(value, (str, bytes)) or value is None:
    raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
  if np.iscomplexobj(value):
    raise TypeError(f"{name} must be real; got complex values (pass the real part explicitly)")
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from err
  if np.isnan(arr).any():
    raise ValueError(f"{name} contains NaN; it must be a finite number")
  return arr


def check_choice(name: str, value, choices) -> str:
  if not isinstance(value, str) or value not in choices:
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
  return value


def check_positive(name: str, value, allow_inf: bool = False) -> np.ndarray:
  if is_traced(value):
    return _check_traced(name, value)
  arr = _as_float_array(name, value)
  if (arr <= 0).any() or (not allow_inf and np.isinf(arr).any()):
    raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
  return arr


def check_nonnegative(name: str, value) -> np.ndarray:
  if is_traced(value):
    return _check_traced(name, value)
  arr = _as_float_array(name, value)
  if (arr < 0).any() or np.isinf(arr).any():
    raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")
  return arr


def check_interval(name: str, value, lo: float, hi: float, tol: float = 0.0) -> np.ndarray:
  """Closed interval [lo, hi]; values within `tol` outside are accepted (rounding)."""
  if is_traced(value):
    return _check_traced(name, value)
  arr = _as_float_array(name, value)
  if (arr < lo - tol).any() or (arr > hi + tol).any():
    raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}")
  return arr


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  value = int(value)
  if value < minimum or (maximum is not None and value > maximum):
    rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise ValueError(f"{name} must be an integer {rng}, got {value}")
  return value


def check_fan_in(fan_in) -> float:
  """Finite fan-in n >= 2 of Lemma 1, or None for the infinite-width limit."""
  if fan_in is None:
    return math.inf
  return float(check_int("fan_in", fan_in, minimum=2))


def check_data(name: str, x, ndim: int = 2) -> np.ndarray:
  """A finite float data matrix of shape (N, d) (ndim 4: images (N, H, W, C))."""
  arr = _check_traced(name, x) if is_traced(x) else _as_float_array(name, x)
  if arr.ndim != ndim:
    what = "(N, d)" if ndim == 2 else "(N, H, W, C)"
    raise ValueError(f"{name} must have {ndim} dimensions {what}, got shape {arr.shape}")
  if min(arr.shape) < 1:
    raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
  if not is_traced(arr) and not np.isfinite(arr).all():
    raise ValueError(f"{name} contains NaN or inf; every entry must be finite")
  return arr
