"""The paper's statements about the maps, derived independently and checked against the code."""
import math

import jax
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import optimize

import mimictheory as mt
from conftest import gauss_expectation as _gauss, relu_dual_np

S = 1 - 1 / math.pi
RHO = np.linspace(-1, 1, 41)


def test_proposition_1_straight_relu_is_critical():
  assert float(mt.chi1("relu", sw2=2.0, sb2=0.0)) == 1.0
  np.testing.assert_allclose(mt.correlation_map(RHO, "relu", sw2=2.0, sb2=0.0),
                             2 * relu_dual_np(RHO), atol=1e-15)
  # χ1 = σw²/2 <= 1 along the whole stability line σw²/2 + σb² = 1.
  for sw2 in (0.5, 1.0, 1.5, 1.9):
    assert float(mt.chi1("relu", sw2=sw2, sb2=1 - sw2 / 2)) == pytest.approx(sw2 / 2, abs=1e-15)
    assert float(mt.qstar("relu", sw2=sw2, sb2=1 - sw2 / 2)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fan_in", [None, 300, 10])
def test_theorem_3_weight_mean_stable_init(fan_in):
  n = math.inf if fan_in is None else fan_in
  expected = 2 / S if fan_in is None else 2 * n / ((n - 1) * S)
  assert float(mt.stable_sw2("relu", norm="weight_mean", fan_in=fan_in)) == pytest.approx(
      expected, rel=1e-14)
  kw = dict(activation="relu", sw2=None, norm="weight_mean", fan_in=fan_in)
  tbar = (relu_dual_np(RHO) - relu_dual_np(0)) / (relu_dual_np(1) - relu_dual_np(0))
  np.testing.assert_allclose(mt.correlation_map(RHO, **kw), tbar, atol=1e-14)
  assert float(mt.correlation_map(0.0, **kw)) == pytest.approx(0.0, abs=1e-15)
  assert float(mt.correlation_map(1.0, **kw)) == pytest.approx(1.0, abs=1e-15)
  assert float(mt.correlation_map(-1.0, **kw)) == pytest.approx(-1 / (math.pi - 1), abs=1e-14)
  assert float(mt.chi1(**kw)) == pytest.approx(1 / S, abs=1e-14)
  assert float(mt.correlation_slope(0.0, **kw)) == pytest.approx(math.pi / (2 * (math.pi - 1)),
                                                                 abs=1e-14)


def test_theorem_3_value_for_n_300():
  assert float(mt.stable_sw2("relu", norm="weight_mean", fan_in=300)) == pytest.approx(2.9437,
                                                                                       abs=1e-4)


@pytest.mark.parametrize("rho", [0.6, -0.4])
def test_lemma_1_monte_carlo(rho, rng):
  """E_W[φ(u)ᵀ W̄ᵀ W̄ φ(v)] / (n_i n_o) over random W and (u, v), with its standard error."""
  n_i, n_o, samples = 4, 3, 400_000
  z1, z2 = rng.standard_normal((2, samples, n_i))
  u, v = z1, rho * z1 + math.sqrt(1 - rho**2) * z2
  w = rng.standard_normal((samples, n_o, n_i))
  w_bar = w - w.mean(axis=2, keepdims=True)
  a = np.einsum("soi,si->so", w_bar, np.maximum(u, 0))
  b = np.einsum("soi,si->so", w_bar, np.maximum(v, 0))
  values = (a * b).sum(axis=1) / (n_i * n_o)
  mean, se = values.mean(), values.std(ddof=1) / math.sqrt(samples)
  lemma = float(mt.covariance_map(rho, activation="relu", sw2=1.0, sb2=0.0, norm="weight_mean",
                                  fan_in=n_i))
  assert abs(mean - lemma) < 4 * se
  # (n_i - 1)/n_i (φ̂(ρ) - φ̂(0)), and the finite fan-in factor is visible at this precision.
  assert lemma == pytest.approx((n_i - 1) / n_i * (relu_dual_np(rho) - relu_dual_np(0)), abs=1e-15)
  infinite = float(mt.covariance_map(rho, activation="relu", sw2=1.0, norm="weight_mean"))
  assert abs(mean - infinite) > 4 * se


def test_theorem_2_batch_norm_limit():
  assert float(mt.chi1("relu", norm="batch_norm")) == pytest.approx(math.pi / (math.pi - 1),
                                                                    abs=1e-14)
  # The BN map of a ReLU network is the weight-mean map at its stable initialisation.
  np.testing.assert_allclose(mt.correlation_map(RHO, "relu", norm="batch_norm"),
                             mt.correlation_map(RHO, "relu", sw2=None, norm="weight_mean"),
                             atol=1e-14)


def test_theorem_2_monte_carlo_unit_variances(rng):
  """χ1 = (1/n_o) Σ_i φ̂'(1)/ν_i with ν_i the per-unit variance over a large batch (Appendix A)
  converges to 1/(1 - 1/π) as the width grows: measured on a random wide layer."""
  n_i, n_o, batch = 1500, 200, 3000
  x = np.maximum(rng.standard_normal((batch, n_i)), 0)
  w = rng.standard_normal((n_o, n_i))
  h = x @ w.T / math.sqrt(n_i)
  chi = 0.5 / h.var(axis=0)
  se = chi.std(ddof=1) / math.sqrt(n_o)
  assert abs(chi.mean() - float(mt.chi1("relu", norm="batch_norm"))) < 4 * se + 0.01


def test_figure_4_fixed_points():
  t = mt.fixed_points("relu", sw2=2.0, sb2=0.0)
  assert t.points.tolist() == [1.0] and t.stable.tolist() == [True]
  tbar = mt.fixed_points("relu", sw2=None, norm="weight_mean")
  np.testing.assert_allclose(tbar.points, [0.0, 1.0], atol=1e-12)
  assert tbar.stable.tolist() == [True, False]
  np.testing.assert_allclose(tbar.slopes, [math.pi / (2 * (math.pi - 1)), 1 / S], atol=1e-12)


def test_erf_fixed_points_in_chaotic_phase():
  # Odd φ, σb = 0, χ1 > 1: ρ = 0 attracts, ±1 repel (T is odd).
  fp = mt.fixed_points("erf", sw2=4.0, sb2=0.0)
  np.testing.assert_allclose(fp.points, [-1.0, 0.0, 1.0], atol=1e-12)
  assert fp.stable.tolist() == [False, True, False]


# -- tanh against an independent scipy computation ------------------------------------------


def _scipy_tanh_qstar(sw2, sb2):
  v = lambda q: sw2 * _gauss(lambda z: math.tanh(math.sqrt(q) * z) ** 2) + sb2 - q
  return optimize.brentq(v, 1e-12, 50.0, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("sw2,sb2", [(1.5, 0.05), (3.0, 0.2), (0.8, 0.3)])
def test_tanh_qstar_and_chi1_against_scipy(sw2, sb2):
  q = _scipy_tanh_qstar(sw2, sb2)
  chi = sw2 * _gauss(lambda z: math.cosh(math.sqrt(q) * z) ** -4)
  assert float(mt.qstar("tanh", sw2, sb2)) == pytest.approx(q, rel=1e-10)
  assert float(mt.chi1("tanh", sw2, sb2)) == pytest.approx(chi, rel=1e-10)
  scales = mt.depth_scales("tanh", sw2, sb2)
  if chi < 1:  # ordered: c* = 1 and ξ_c = -1/ln χ1
    assert float(scales.cstar) == 1.0
    assert float(scales.xi_c) == pytest.approx(-1 / math.log(chi), rel=1e-8)


def test_tanh_cstar_in_chaotic_phase_against_scipy():
  sw2, sb2 = 3.0, 0.2
  q = _scipy_tanh_qstar(sw2, sb2)

  def t(c):
    s = math.sqrt(1 - c * c)
    inner = lambda z1: _gauss(lambda z2: math.tanh(math.sqrt(q) * (c * z1 + s * z2)))
    return (sw2 * _gauss(lambda z1: math.tanh(math.sqrt(q) * z1) * inner(z1)) + sb2) / q

  c_star = optimize.brentq(lambda c: t(c) - c, 0.0, 0.99, xtol=1e-12)
  assert float(mt.stable_correlation("tanh", sw2, sb2)) == pytest.approx(c_star, abs=1e-9)


def test_tanh_fixed_points_by_mehlers_series_against_scipy():
  """fixed_points for a numerical φ runs on Mehler's series (issue 20, item 12: it took 47-59 s
  by 2-D quadrature at every grid point); its nontrivial fixed point against scipy."""
  from mimictheory._src import maps, tables
  sw2, sb2 = 3.0, 0.2
  q = _scipy_tanh_qstar(sw2, sb2)
  with jax.enable_x64(True):
    layer = maps.build_layer("tanh", sw2, sb2, "none", None)
    assert isinstance(maps.series_layer(layer, q).activation, tables.Tabulated)

  def t(c):
    s = math.sqrt(1 - c * c)
    inner = lambda z1: _gauss(lambda z2: math.tanh(math.sqrt(q) * (c * z1 + s * z2)))
    return (sw2 * _gauss(lambda z1: math.tanh(math.sqrt(q) * z1) * inner(z1)) + sb2) / q

  c_star = optimize.brentq(lambda c: t(c) - c, 0.0, 0.99, xtol=1e-12)
  fp = mt.fixed_points("tanh", sw2, sb2)
  assert fp.points[-1] == 1.0 and not fp.stable[-1] and fp.stable[0]
  assert fp.points[0] == pytest.approx(c_star, abs=1e-9)
  assert fp.qstar == pytest.approx(q, rel=1e-12)


def _closed_form_maps(name, sw2, sb2):
  """(q*, T, χ1, T'(1)) from closed forms written here, independently of the library.

  ReLU: V(q) = σw² q/2 + σb², so q* = σb²/(1 - σw²/2) if σw² < 2, else ∞ (then σb² is negligible
  and T is the limit φ̂(ρ)/φ̂(1)); χ1 = σw²/2 always, but T'(1) = 1 at q* = ∞. Erf: V(q) =
  σw² (2/π) arcsin(2q/(1+2q)) + σb², solved by brentq; E[φ'(√q z)²] = (4/π)/√(1+4q)."""
  if name == "relu":
    if sw2 < 2:
      q = sb2 / (1 - sw2 / 2)
      t = lambda rho: (sw2 * q * relu_dual_np(rho) + sb2) / q  # noqa: E731
      return q, t, sw2 / 2, sw2 / 2
    return math.inf, lambda rho: relu_dual_np(rho) / relu_dual_np(1.0), sw2 / 2, 1.0
  v = lambda q: sw2 * 2 / math.pi * np.arcsin(2 * q / (1 + 2 * q)) + sb2  # noqa: E731
  q = optimize.brentq(lambda q: v(q) - q, 1e-12, 1e3, xtol=1e-15, rtol=1e-15)
  t = lambda rho: (sw2 * 2 / math.pi * np.arcsin(2 * q * rho / (1 + 2 * q)) + sb2) / q  # noqa
  chi = sw2 * 4 / math.pi / math.sqrt(1 + 4 * q)
  return q, t, chi, chi


@given(sw2=st.floats(0.3, 4.0), sb2=st.floats(0.01, 0.5), rho=st.floats(-1.0, 1.0))
@pytest.mark.parametrize("name", ["relu", "erf"])
def test_maps_match_closed_forms_in_every_regime(name, sw2, sb2, rho):
  """q*, T(ρ), χ1 and T'(1) against `_closed_form_maps`, q* = ∞ (ReLU, σw² > 2) included."""
  kw = dict(activation=name, sw2=sw2, sb2=sb2)
  q, t, chi, slope_at_one = _closed_form_maps(name, sw2, sb2)
  assert float(mt.qstar(**kw)) == pytest.approx(q, rel=1e-10)
  assert float(mt.correlation_map(rho, **kw)) == pytest.approx(float(t(rho)), rel=1e-10,
                                                               abs=1e-12)
  assert float(mt.chi1(**kw)) == pytest.approx(chi, rel=1e-10)
  assert float(mt.correlation_slope(1.0, **kw)) == pytest.approx(slope_at_one, rel=1e-9)


@pytest.mark.parametrize("call,match", [
    (lambda: mt.chi1("relu", sw2=0.0), "sw2 must be > 0"),
    (lambda: mt.chi1("relu", sw2=-1.0), "sw2 must be > 0"),
    (lambda: mt.chi1("relu", sb2=-0.1), "sb2 must be >= 0"),
    (lambda: mt.chi1("relu", sw2=float("nan")), "sw2 contains NaN"),
    (lambda: mt.correlation_map(1.5), r"rho must lie in \[-1, 1\]"),
    (lambda: mt.chi1("relu", norm="layer_norm"), "norm must be one of"),
    (lambda: mt.chi1("softsign"), "activation must be one of"),
    (lambda: mt.chi1("relu", fan_in=1), "fan_in must be an integer >= 2"),
    (lambda: mt.stable_sw2("relu", sb2=1.5, norm="none"), "sb2 must be < 1"),
    (lambda: mt.covariance_map(2.0, q1=1.0, q2=1.0), r"\|q12\| <= sqrt\(q1 q2\)"),
])
def test_bad_input_raises_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
