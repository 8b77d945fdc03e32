import contextlib
import dataclasses
import math
import os

import jax

import numpy as np
import pytest
from hypothesis import settings
from scipy import integrate

from mimictheory._src import kernels as kernels_module

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


@pytest.fixture
def rng():
  return np.random.default_rng(20210202)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def uncentred_input_layer():
  """The planted bug: the kernels' input layer forgets to centre x under weight mean."""
  original = kernels_module._input_kernel

  def buggy(layer, x1, x2, gain):
    return original(dataclasses.replace(layer, norm="none"), x1, x2, gain)

  kernels_module._input_kernel = buggy
  jax.clear_caches()  # the jitted recursions were traced with the correct input layer
  try:
    yield
  finally:
    kernels_module._input_kernel = original
    jax.clear_caches()
