import math
import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          print_blob=True)
settings.load_profile("ci")


def relu_dual_np(rho):
  """The paper's eq 4, written independently of the library."""
  rho = np.asarray(rho, dtype=float)
  return (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)


def relu_dual_prime_np(rho):
  return (np.pi - np.arccos(np.asarray(rho, dtype=float))) / (2 * np.pi)


@pytest.fixture
def rng():
  return np.random.default_rng(20210202)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
