"""Phase diagrams and the critical line against closed forms and an independent scipy solve."""
import math

import jax
import jax.numpy as jnp
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


def _scipy_tanh_point(sw2, sb2, norm):
  """(q*, χ1) of tanh by scipy: V(q) = σw² E[tanh²(√q z)] + σb² (tanh is odd, so weight mean
  centres nothing), χ1 = σw² E[sech⁴(√q z)]; with BN q = 1 and χ1 = E[φ'²] / Var φ."""
  second = lambda q: _gauss(lambda z: math.tanh(math.sqrt(q) * z) ** 2)  # noqa: E731
  slope = lambda q: _gauss(lambda z: math.cosh(math.sqrt(q) * z) ** -4)  # noqa: E731
  if norm == "batch_norm":
    return 1.0, slope(1.0) / second(1.0)
  q = optimize.brentq(lambda q: sw2 * second(q) + sb2 - q, 1e-9, 50.0, xtol=1e-15, rtol=1e-14)
  return q, sw2 * slope(q)


@pytest.mark.parametrize("norm", [pytest.param("none", marks=pytest.mark.slow),
                                  pytest.param("weight_mean", marks=pytest.mark.slow),
                                  pytest.param("batch_norm", marks=pytest.mark.slow)])
def test_tanh_phase_grid_agrees_with_pointwise_quadrature(norm):
  """q* and χ1 against scipy; the grid's c* (Mehler series) against 2-D quadrature."""
  sw2, sb2 = np.array([0.9, 1.7, 3.2]), np.array([0.02, 0.2])
  pd = mt.phase_diagram("tanh", sw2=sw2, sb2=sb2, norm=norm)
  for i, w in enumerate(sw2):
    for j, b in enumerate(sb2):
      q, chi = _scipy_tanh_point(w, b, norm)
      assert pd.qstar[i, j] == pytest.approx(q, rel=1e-10)
      assert pd.chi1[i, j] == pytest.approx(chi, rel=1e-10)
      s = mt.depth_scales("tanh", w, b, norm=norm)  # c* by 2-D quadrature, not the series
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


# ----------------------------------------------------------------------------------------------
# Issue 10: kinked, unbounded and saturating activations; regimes; critical lines.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relu_numerical", "leaky_relu_numerical"])
def test_kinked_activation_phase_cells_match_the_closed_form(name):
  """relu_numerical at (1.9, 0.05): χ_c = T'(1) = χ1 = 0.95 (Proposition 1), ξ_c = 19.50. The
  former order-64 Mehler series gave 0.920 and 11.98; see the next test for what it misses."""
  closed = name.replace("_numerical", "")
  sw2, sb2 = np.array([1.2, 1.9, 2.6]), np.array([0.05, 0.2])
  pd = mt.phase_diagram(name, sw2=sw2, sb2=sb2)
  ref = mt.phase_diagram(closed, sw2=sw2, sb2=sb2)
  finite = np.isfinite(ref.qstar)
  np.testing.assert_allclose(pd.qstar[finite], ref.qstar[finite], rtol=1e-10)
  np.testing.assert_allclose(pd.chi1, ref.chi1, rtol=1e-10)
  np.testing.assert_allclose(pd.chi_c, ref.chi_c, rtol=1e-10)
  np.testing.assert_allclose(pd.cstar, ref.cstar, atol=1e-10)
  assert (pd.regime == ref.regime).all()
  if name == "relu_numerical":
    assert pd.chi_c[1, 0] == pytest.approx(0.95, abs=1e-12)
    assert pd.xi_c[1, 0] == pytest.approx(-1 / math.log(0.95), rel=1e-10)


@pytest.mark.parametrize("order", [64])
def test_the_tolerance_catches_a_truncated_series_for_a_kink(order):
  """T'(1) of ReLU from Mehler's series cut at `order` (the old grid's method) misses the
  k^(-3/2) tail of (k+1) a_(k+1)²: off by far more than the 1e-10 the test above demands."""
  from mimictheory._src import tables
  act = mt.get_activation("relu_numerical")
  with jax.enable_x64(True):
    a = np.asarray(tables.hermite_coefficients(act, jnp.asarray([1.0]), order + 1))[0]
  k = np.arange(order + 1.0)
  truncated = np.sum((k + 1) * a[1:] ** 2)  # E[φ'(u)φ'(v)] at ρ = 1, q = 1
  assert abs(truncated - 0.5) > 1e-3  # the exact E[1(z > 0)] = 1/2


def test_regimes_where_the_answer_is_known():
  pd = mt.phase_diagram("relu", sw2=np.array([1.5, 2.0, 2.5]), sb2=np.array([0.0, 0.1]))
  names = np.asarray(mt.REGIMES)[pd.regime]
  # ReLU at σb² = 0: q* = 0 below σw² = 2, every q fixed at 2, ∞ above (χ1 = 1.25 but T'(1) = 1)
  assert names[:, 0].tolist() == ["q* = 0", "critical", "q* = ∞"]
  assert names[:, 1].tolist() == ["ordered", "q* = ∞", "q* = ∞"]
  assert pd.chi1[2, 0] == pytest.approx(1.25, abs=1e-15) and pd.chi_c[2, 0] == pytest.approx(1.0)
  tanh = mt.phase_diagram("tanh", sw2=np.array([0.8, 1.0, 1.5]), sb2=np.array([0.0]))
  assert np.asarray(mt.REGIMES)[tanh.regime[:, 0]].tolist() == ["q* = 0", "q* = 0", "chaotic"]


def test_chi1_exactly_at_the_tanh_critical_point():
  """tanh at (1, 0): q* = 0 and χ1 = tanh'(0)² = 1 (the solver used to stop at q = 3.8e-8)."""
  assert float(mt.qstar("tanh", sw2=1.0, sb2=0.0)) == 0.0
  assert float(mt.chi1("tanh", sw2=1.0, sb2=0.0)) == pytest.approx(1.0, abs=1e-12)
  assert float(mt.chi1("tanh", sw2=1.0, sb2=0.0, norm="weight_mean")) == pytest.approx(
    1.0, abs=1e-12
  )
  status = lambda *a: mt.QSTAR_STATUS[int(mt.depth_scales(*a).status)]  # noqa: E731
  assert status("tanh", 1.0, 0.0) == "q* = 0" and status("relu", 3.0, 0.0) == "q* = ∞"
  assert status("tanh", 1.5, 0.05) == "converged"
  # just above: a genuine small fixed point q* ≈ (1 - 1/σw²)/2
  assert float(mt.qstar("tanh", sw2=1 + 1e-6, sb2=0.0)) == pytest.approx(5e-7, rel=1e-5)


_SMOOTH = {  # φ and φ' in plain Python, independent of the library
    "gelu": (lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
             + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "swish": (lambda x: x / (1 + math.exp(-x)) if x > -700 else 0.0,
              lambda x: (1 / (1 + math.exp(-x))) * (1 + x * (1 - 1 / (1 + math.exp(-x))))
              if x > -700 else 0.0),
    "softplus": (lambda x: max(x, 0) + math.log1p(math.exp(-abs(x))),
                 lambda x: 1 / (1 + math.exp(-x)) if x > -700 else 0.0),
}


def _scipy_moment(f, q):
  from scipy import integrate
  s = math.sqrt(q)
  density = lambda x: f(x) * math.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q)
  edges = sorted({-12 * s, 12 * s, 0.0} | {p for p in (-8, -2, 2, 8) if abs(p) < 12 * s})
  return sum(integrate.quad(density, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
             for a, b in zip(edges[:-1], edges[1:]))


def _scipy_line_sb2(name, norm, q):
  """σb²(q*) and σw²(q*) on the line χ1 = 1, V(q*) = q*, by scipy quadrature."""
  f, fp = _SMOOTH[name]
  sw2 = 1.0 / _scipy_moment(lambda x: fp(x) ** 2, q)
  moment = _scipy_moment(lambda x: f(x) ** 2, q)
  if norm == "weight_mean":
    moment -= _scipy_moment(f, q) ** 2
  return q - sw2 * moment, sw2


@pytest.mark.parametrize("name,norm,reached", [
    ("gelu", "none", [False, True]), ("swish", "none", [False, False]),
    ("gelu", "weight_mean", [True, True]), ("swish", "weight_mean", [False, True]),
    ("softplus", "weight_mean", [True, True])])
def test_critical_lines_against_an_independent_scipy_root(name, norm, reached):
  """GELU and softplus used to report exists=False everywhere (a bracket that ended too low).
  Every branch point (σw², σb², q*) is checked with scipy: brentq finds the same q* for
  σb²(q*) = σb², and σw² = 1/E[φ'²](q*). A branch is on the grid's line only if the variance
  map reaches its q* from q = 1; where it does not (an unstable fixed point: the grid's q*
  jumps instead), `exists` is False, and the test says where that is known to happen."""
  from scipy import optimize
  sb2 = np.array([0.05, 0.2])
  line = mt.critical_line(name, sb2=sb2, norm=norm)
  assert line.exists.tolist() == reached
  for j, target in enumerate(sb2):
    for w, q, hit in zip(line.branch_sw2[j], line.branch_qstar[j], line.branch_reached[j]):
      if np.isnan(w):
        continue
      root = optimize.brentq(lambda t: _scipy_line_sb2(name, norm, math.exp(t))[0] - target,
                             math.log(q) - 0.05, math.log(q) + 0.05, xtol=1e-13)
      assert math.exp(root) == pytest.approx(q, rel=1e-8)
      assert _scipy_line_sb2(name, norm, math.exp(root))[1] == pytest.approx(w, rel=1e-9)
      assert float(mt.chi1(name, w, target, norm=norm)) == pytest.approx(1.0, abs=1e-9) or not hit
      reached_q = float(mt.qstar(name, w, target, norm=norm))
      assert (reached_q == pytest.approx(q, rel=1e-8)) == bool(hit)


def test_softplus_without_weight_mean_has_no_critical_line():
  """σb²(q*) on the line χ1 = 1 is negative for every q* (scipy: -1.92 at q* -> 0, -44 at
  q* = e^8), so no σb² >= 0 is critical: softplus' constant offset ln 2 keeps the variance."""
  line = mt.critical_line("softplus", sb2=np.array([0.0, 0.1]), norm="none")
  assert not line.exists.any() and np.isnan(line.branch_sw2).all()
  for q in (1e-4, 1.0, math.exp(8)):
    assert _scipy_line_sb2("softplus", "none", q)[0] < -1.9


def test_gelu_weight_mean_line_is_consistent_with_the_grid():
  """χ1 on the grid crosses 1 where the line is (it used to cross cells with χ1 = 1.5-1.75)."""
  sw2, sb2 = np.linspace(1.0, 6.0, 60), np.array([0.05, 0.15])
  pd = mt.phase_diagram("gelu", sw2=sw2, sb2=sb2, norm="weight_mean")
  for j in range(sb2.size):
    crit = pd.critical.sw2[j]
    assert np.isfinite(crit)
    near = np.argmin(np.abs(sw2 - crit))
    assert abs(pd.chi1[near, j] - 1) < 0.1
    finite = np.isfinite(pd.qstar[:, j])
    assert (pd.chi1[finite & (sw2 < crit - 1e-9), j] < 1).all()
    assert (pd.chi1[finite & (sw2 > crit + 1e-9), j] > 1).all()


@pytest.mark.parametrize("name,norm", [("gelu", "none"), ("swish", "weight_mean"),
                                       ("softplus", "none")])
def test_grid_cells_match_pointwise_quadrature(name, norm):
  """The table route (1-D tables, Mehler's series) against the pointwise solvers (direct 1-D
  quadrature and 2-D quadrature for c*), to 1e-8."""
  sw2, sb2 = np.array([1.1, 3.6]), np.array([0.03, 0.25])
  pd = mt.phase_diagram(name, sw2=sw2, sb2=sb2, norm=norm)
  for i, w in enumerate(sw2):
    for j, b in enumerate(sb2):
      s = mt.depth_scales(name, w, b, norm=norm)
      if np.isfinite(s.qstar):
        assert pd.qstar[i, j] == pytest.approx(float(s.qstar), rel=1e-8)
        assert pd.cstar[i, j] == pytest.approx(float(s.cstar), abs=1e-8)
        assert pd.chi_c[i, j] == pytest.approx(float(s.chi_c), abs=1e-8)
      else:
        assert np.isinf(pd.qstar[i, j])
      assert pd.chi1[i, j] == pytest.approx(float(mt.chi1(name, w, b, norm=norm)), rel=1e-8)
