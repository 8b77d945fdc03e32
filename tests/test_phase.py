"""Phase diagrams and the critical line against closed forms and an independent scipy solve."""
import math

import numpy as np
import pytest
from scipy import optimize

import mimictheory as mt
from conftest import gauss_expectation as _gauss




def _scipy_tanh_critical_sw2(sb2):
  """χ1 = 1 and q = V(q): σw²(q) = 1/E[sech⁴(√q z)], solve σb²(q) = q - σw²(q) E[tanh²] = sb2."""
  sw2 = lambda q: 1 / _gauss(lambda z: math.cosh(math.sqrt(q) * z) ** -4)
  sb2_of_q = lambda q: q - sw2(q) * _gauss(lambda z: math.tanh(math.sqrt(q) * z) ** 2)
  q = optimize.brentq(lambda q: sb2_of_q(q) - sb2, 1e-6, 20.0, xtol=1e-14, rtol=1e-13)
  return sw2(q)


def test_tanh_critical_line_against_scipy():
  sb2 = np.array([0.01, 0.05, 0.1, 0.25])
  line = mt.critical_line("tanh", sb2=sb2)
  assert line.exists.all()
  expected = [_scipy_tanh_critical_sw2(b) for b in sb2]
  np.testing.assert_allclose(line.sw2, expected, rtol=1e-9)
  # On the line χ1 = 1 and the fixed point is the returned q*.
  for w, b, q in zip(line.sw2, line.sb2, line.qstar):
    assert float(mt.chi1("tanh", w, b)) == pytest.approx(1.0, abs=1e-9)
    assert float(mt.qstar("tanh", w, b)) == pytest.approx(q, rel=1e-8)


def test_relu_phase_diagram_closed_forms():
  sw2, sb2 = np.linspace(0.5, 3.5, 31), np.linspace(0.0, 0.3, 7)
  pd = mt.phase_diagram("relu", sw2=sw2, sb2=sb2)
  w, b = np.meshgrid(sw2, sb2, indexing="ij")
  np.testing.assert_allclose(pd.chi1, w / 2, atol=1e-15)  # Proposition 1: χ1 = σw²/2
  ordered = w < 2
  with np.errstate(divide="ignore", invalid="ignore"):
    expected_q = np.where(b > 0, b / (1 - w / 2), 0.0)  # q* = σb² / (1 - σw²/2)
  np.testing.assert_allclose(pd.qstar[ordered], expected_q[ordered], rtol=1e-12, atol=1e-18)
  assert np.isinf(pd.qstar[(w > 2) & (b > 0)]).all()
  np.testing.assert_allclose(pd.critical.sw2, 2.0)
  assert (pd.cstar[ordered] == 1.0).all()


def test_weight_mean_relu_phase_diagram_is_chaotic_at_its_stable_line():
  sw2 = np.array([mt.stable_sw2("relu", norm="weight_mean")])
  pd = mt.phase_diagram("relu", sw2=sw2, sb2=np.array([0.0]), norm="weight_mean")
  assert pd.chi1[0, 0] == pytest.approx(1 / (1 - 1 / math.pi), abs=1e-13)
  assert pd.cstar[0, 0] == pytest.approx(0.0, abs=1e-14)
  assert pd.xi_c[0, 0] == pytest.approx(-1 / math.log(math.pi / (2 * (math.pi - 1))), rel=1e-12)


@pytest.mark.parametrize("norm", ["none", "weight_mean", "batch_norm"])
def test_tanh_phase_grid_agrees_with_pointwise_quadrature(norm):
  """The grid's c* comes from the Mehler series, the pointwise c* from 2-D quadrature."""
  sw2, sb2 = np.array([0.9, 1.7, 3.2]), np.array([0.02, 0.2])
  pd = mt.phase_diagram("tanh", sw2=sw2, sb2=sb2, norm=norm)
  for i, w in enumerate(sw2):
    for j, b in enumerate(sb2):
      s = mt.depth_scales("tanh", w, b, norm=norm)
      assert pd.qstar[i, j] == pytest.approx(float(s.qstar), rel=1e-12)
      assert pd.chi1[i, j] == pytest.approx(float(mt.chi1("tanh", w, b, norm=norm)), rel=1e-12)
      assert pd.cstar[i, j] == pytest.approx(float(s.cstar), abs=2e-6)
      assert pd.chi_c[i, j] == pytest.approx(float(s.chi_c), abs=2e-6)


def test_chi1_changes_sign_across_the_critical_line():
  sw2, sb2 = np.linspace(0.8, 3.0, 45), np.array([0.05, 0.15])
  pd = mt.phase_diagram("erf", sw2=sw2, sb2=sb2)
  for j in range(sb2.size):
    crit = pd.critical.sw2[j]
    assert (pd.chi1[sw2 < crit - 1e-9, j] < 1).all() and (pd.chi1[sw2 > crit + 1e-9, j] > 1).all()


def test_phase_errors():
  with pytest.raises(ValueError, match="batch_norm' has no critical line"):
    mt.critical_line("relu", norm="batch_norm")
  with pytest.raises(ValueError, match="sw2 must be > 0"):
    mt.phase_diagram("relu", sw2=np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="sb2 must be >= 0"):
    mt.phase_diagram("relu", sb2=np.array([-0.1]))
  with pytest.raises(ValueError, match="one-dimensional"):
    mt.phase_diagram("relu", sw2=np.ones((2, 2)))
