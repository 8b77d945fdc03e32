"""Bounded activations at extreme σw² (issue 20, item 5): q* is finite for every finite σw²
(q* <= σw² sup φ² + σb²), and χ1 follows the large-q expansion. The references are written
here from integrals known in closed form (∫sech² = 2, ∫u² sech² = π²/6, ∫sech⁴ = 4/3,
∫u² sech⁴ = (π² - 6)/9) and erf's closed forms, not from the library."""
import math

import numpy as np
import pytest
from scipy import integrate

import mimictheory as mt


def _tanh_moments(q):
  """E[tanh²(√q z)] and E[sech⁴(√q z)] to O(q^(-5/2)) from E[g(√q z)] = (∫g - ∫u²g/(2q) + ...)
  / √(2πq) for integrable g."""
  root = math.sqrt(2 * math.pi * q)
  return (1 - (2 - math.pi**2 / 6 / (2 * q)) / root,
          (4 / 3 - (math.pi**2 - 6) / 9 / (2 * q)) / root)


def _tanh_reference(sw2, sb2):
  q = sw2 + sb2
  for _ in range(200):  # q -> σw² M(q) + σb² contracts fast at large q
    q = sw2 * _tanh_moments(q)[0] + sb2
  return q, sw2 * _tanh_moments(q)[1]


def _erf_reference(sw2, sb2):
  q = sw2 + sb2
  for _ in range(200):
    q = sw2 * 2 / math.pi * math.atan(2 * q / math.sqrt(1 + 4 * q)) + sb2
  return q, sw2 * 4 / math.pi / math.sqrt(1 + 4 * q)


def test_the_closed_form_integrals_of_the_reference():
  sech = lambda u: 1 / math.cosh(u)  # noqa: E731
  for f, want in [(lambda u: sech(u) ** 2, 2), (lambda u: u * u * sech(u) ** 2, math.pi**2 / 6),
                  (lambda u: sech(u) ** 4, 4 / 3),
                  (lambda u: u * u * sech(u) ** 4, (math.pi**2 - 6) / 9)]:
    assert integrate.quad(f, -60, 60, epsabs=1e-14, limit=200)[0] == pytest.approx(want, 1e-12)


@pytest.mark.parametrize("sw2", [1e11, 1e12, 1e13, 1e50, 1e300])
@pytest.mark.parametrize("name,reference", [("tanh", _tanh_reference), ("erf", _erf_reference)])
def test_qstar_and_chi1_at_extreme_sw2(name, reference, sw2):
  q_ref, chi_ref = reference(sw2, 0.0)
  q, chi = float(mt.qstar(name, sw2, 0.0)), float(mt.chi1(name, sw2, 0.0))
  assert math.isfinite(q) and q <= sw2  # q* <= σw² sup φ² + σb², sup φ² = 1
  assert q == pytest.approx(q_ref, rel=1e-12)
  assert chi == pytest.approx(chi_ref, rel=1e-9)


def test_tanh_moments_continuous_across_the_switch_to_the_expansion():
  act = mt.get_activation("tanh")
  q = np.array([0.999e12, 1e12, 1.001e12])
  d = np.asarray(act.derivative_second_moment(q)) * np.sqrt(q)
  np.testing.assert_allclose(d, d[1], rtol=1e-11)
  np.testing.assert_allclose(np.asarray(act.second_moment(q)),
                             [_tanh_moments(v)[0] for v in q], rtol=1e-14)
