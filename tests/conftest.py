import contextlib
import math
import os

import jax
import numpy as np
import pytest
from hypothesis import settings
from scipy import integrate

from mimictheory._src import stax as stax_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One XLA compilation cache for the whole run: the two xdist workers, and the notebook kernels
# and command-line subprocesses the tests start (they inherit the environment), compile many
# of the same functions; each is compiled once. It lives in the checkout (git-ignored), so a
# fresh clone starts cold; MIMICTHEORY_TEST_JAX_CACHE=0 turns it off.
if os.environ.get("MIMICTHEORY_TEST_JAX_CACHE", "1") != "0":
  _CACHE = {"JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.05",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  for _name, _value in _CACHE.items():
    os.environ.setdefault(_name, _value)  # for the subprocesses
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

def run_on_host_devices(script: str, cwd, devices: int = 4, timeout: int = 600) -> dict:
  """Run `script` in a fresh Python process with `devices` forced CPU devices (the device count
  is fixed when JAX starts) and return the JSON object its last line prints."""
  import json
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)
  assert res.returncode == 0, res.stderr[-2000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          print_blob=True)
settings.load_profile("ci")


def relu_dual_np(rho):
  """The paper's eq 4, written independently of the library."""
  rho = np.asarray(rho, dtype=float)
  return (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)


def gauss_expectation(f):
  """E[f(z)], z ~ N(0, 1), by scipy's adaptive quadrature (independent of the library)."""
  value, _ = integrate.quad(lambda z: f(z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                            -14, 14, epsabs=1e-15, epsrel=1e-13, limit=200)
  return value


def relu_dual_prime_np(rho):
  return (np.pi - np.arccos(np.asarray(rho, dtype=float))) / (2 * np.pi)


@pytest.fixture(scope="session")
def nt_python():
  """The neural-tangents reference environment's Python: skipped where it is missing, a
  failure where CI requires it (MIMICTHEORY_REQUIRE_NT=1)."""
  from mimictheory._src import crosscheck as cc
  try:
    return cc.reference_python()
  except cc.ReferenceUnavailable as err:
    if os.environ.get("MIMICTHEORY_REQUIRE_NT") == "1":
      pytest.fail(str(err))
    pytest.skip(str(err))


@pytest.fixture
def rng():
  return np.random.default_rng(20210202)



@contextlib.contextmanager
def uncentred_input_layer():
  """The planted bug: the input kernel forgets the inputs' feature means, so a weight-mean first
  layer does not centre x."""
  original = stax_module._input_kernel

  def buggy(*args, **kwargs):
    return original(*args, **kwargs).replace(mean1=None, mean2=None)

  stax_module._input_kernel = buggy
  jax.clear_caches()  # the jitted recursions were traced with the correct input layer
  try:
    yield
  finally:
    stax_module._input_kernel = original
    jax.clear_caches()


# Examples that build or train whole models or run Monte Carlo (20-40 s each on 2 cores) run
# with the tests marked slow (`make test-slow`); every other example runs in `make test`.
SLOW_EXAMPLES = {"mimictheory._src.memory.step_time", "mimictheory._src.models.SqueezeNet",
                 "mimictheory._src.models.ShuffleNetV2",
                 "mimictheory._src.experiments.batch_norm_gap",
                 "mimictheory._src.finite.finite_network"}


def pytest_collection_modifyitems(config, items):
  for item in items:
    if isinstance(item, pytest.DoctestItem) and item.name in SLOW_EXAMPLES:
      item.add_marker(pytest.mark.slow)
