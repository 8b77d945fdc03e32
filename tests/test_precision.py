"""Theory in float64 whatever the global setting; training in float32 untouched by imports."""
import json
import os
import subprocess
import sys


import mimictheory as mt
from conftest import REPO

SCRIPT = r"""
import json, jax, jax.numpy as jnp
step = jax.jit(lambda w, x: jnp.tanh(x @ w).sum())
w, x = jnp.ones((8, 4)) * 0.1, jnp.linspace(0, 1, 16).reshape(2, 8)
before = step(w, x)
import mimictheory as mt
chi = mt.chi1("tanh", 1.5, 0.05)
k = mt.kernels(jnp.ones((3, 4)), depth=3)
after = step(w, x)
print(json.dumps({
    "x64_flag": bool(jax.config.jax_enable_x64),
    "default_dtype": str(jnp.ones(1).dtype),
    "chi_dtype": str(chi.dtype), "chi_type": type(chi).__name__,
    "ntk_dtype": str(k.ntk.dtype),
    "train_dtype": str(after.dtype), "same": bool(before == after),
    "cache": step._cache_size(),
}))
"""


def test_theory_float64_training_float32_untouched(tmp_path):
  res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=REPO, JAX_ENABLE_X64="0"))
  assert res.returncode == 0, res.stderr
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out["x64_flag"] is False and out["default_dtype"] == "float32"
  assert out["chi_dtype"] == "float64" and out["chi_type"] == "ndarray"
  assert out["ntk_dtype"] == "float64"
  assert out["train_dtype"] == "float32" and out["same"] and out["cache"] == 1


def test_results_keep_float64_in_later_arithmetic():
  # A NumPy result keeps its precision; 1 + 1e-12 would round to 1 in float32.
  chi = mt.chi1("relu", sw2=2.0 + 2e-12)
  assert abs((chi - 1.0) - 1e-12) < 1e-15
