"""Dual activations: closed forms against quadrature, scipy and their own identities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import integrate

import mimictheory as mt
from mimictheory._src.precision import float64
from conftest import gauss_expectation, relu_dual_np


def test_relu_dual_special_values():
  # The paper's eq 4: φ̂(1) = 1/2, φ̂(0) = 1/(2π), φ̂'(1) = 1/2, φ̂'(0) = 1/4.
  with jax.enable_x64(True):
    assert float(mt.relu_dual(1.0)) == pytest.approx(0.5, abs=1e-16)
    assert float(mt.relu_dual(0.0)) == pytest.approx(1 / (2 * math.pi), abs=1e-16)
    grad = jax.grad(mt.relu_dual)
    assert float(grad(1.0)) == pytest.approx(0.5, abs=1e-16)
    assert float(grad(0.0)) == pytest.approx(0.25, abs=1e-16)
    assert float(grad(-1.0)) == pytest.approx(0.0, abs=1e-16)


def test_series_arcsin_and_arccos_match_numpy_to_a_few_ulp():
  """The one-polynomial arcsin/arccos behind the ReLU and erf kernels, against NumPy's libm on
  random points, both sides of the switch at |x| = 1/2, near ±1 (relative, where arccos is
  small) and near 0 (relative, where arcsin is small)."""
  from mimictheory._src.activations import _asin_acos
  rng = np.random.default_rng(0)
  tiny = np.logspace(-300, -1, 400)
  x = np.concatenate([rng.uniform(-1, 1, 200_000), 1 - np.logspace(-16, -1, 400),
                      -1 + np.logspace(-16, -1, 400), tiny, -tiny,
                      np.nextafter(0.5, [0, 1]), np.nextafter(-0.5, [0, -1]), [0.0, 1.0, -1.0]])
  with jax.enable_x64(True):
    asin, acos = (np.asarray(v) for v in jax.jit(_asin_acos)(jnp.asarray(x)))
  ulp_asin = np.abs(asin - np.arcsin(x)) / np.spacing(np.abs(np.arcsin(x)) + 1e-320)
  ulp_acos = np.abs(acos - np.arccos(x)) / np.spacing(np.arccos(x))
  assert ulp_asin.max() <= 4 and ulp_acos.max() <= 4, (ulp_asin.max(), ulp_acos.max())
  assert acos[x == 1.0] == 0.0 and acos[x == -1.0] == np.pi and asin[x == 0] == 0


def test_relu_dual_derivatives_at_the_boundary_are_exact_not_nan():
  with jax.enable_x64(True):
    relu = mt.ReLU()
    # ∂K/∂q12 at ρ = ±1 through the custom JVP: E[φ'φ'] = 1/2 and 0, with no NaN.
    dk = jax.grad(lambda q12: relu.kernel(2.0, 2.0, q12))
    assert float(dk(2.0)) == pytest.approx(0.5, abs=1e-15)
    assert float(dk(-2.0)) == pytest.approx(0.0, abs=1e-15)
    # Second derivative: 1/(2π√(1-ρ²)) -> +∞ at ρ = 1, the true value, not NaN.
    d2 = jax.grad(mt.relu_dual_derivative)
    assert np.isinf(float(d2(1.0))) and float(d2(1.0)) > 0
    assert float(d2(0.0)) == pytest.approx(1 / (2 * math.pi), abs=1e-15)
    # Plain autodiff of eq 4 would give NaN here; the library must not.
    naive = jax.grad(lambda r: (jnp.sqrt(1 - r**2) + (jnp.pi - jnp.arccos(r)) * r) / (2 * jnp.pi))
    assert np.isnan(float(naive(1.0)))


def _random_covariances(rng, n=60):
  q1, q2 = rng.uniform(0.05, 5.0, n), rng.uniform(0.05, 5.0, n)
  rho = rng.uniform(-1, 1, n)
  rho[:6] = [1.0, -1.0, 0.0, 0.999999, -0.9999999, 1e-9]
  return q1, q2, rho * np.sqrt(q1 * q2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "erf"])
@float64
def test_closed_form_matches_quadrature_to_1e10(name, rng):
  closed, numerical = mt.get_activation(name), mt.get_activation(name + "_numerical")
  q1, q2, q12 = _random_covariances(rng)
  for method in ("kernel", "derivative_kernel"):
    a = np.asarray(getattr(closed, method)(q1, q2, q12))
    b = np.asarray(getattr(numerical, method)(q1, q2, q12))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=method)
  for method in ("mean", "second_moment", "derivative_second_moment", "variance"):
    a = np.asarray(getattr(closed, method)(q1))
    b = np.asarray(getattr(numerical, method)(q1))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=method)


def _scipy_expectation(f, g, q1, q2, rho):
  """E[f(u) g(v)] by scipy's adaptive 2-D quadrature, independent of the library."""
  s = math.sqrt(1 - rho**2)
  pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
  integrand = lambda z2, z1: (f(math.sqrt(q1) * z1) * g(math.sqrt(q2) * (rho * z1 + s * z2))
                              * pdf(z1) * pdf(z2))
  value, _ = integrate.dblquad(integrand, -12, 12, -12, 12, epsabs=1e-13, epsrel=1e-12)
  return value


GELU = lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))
GELU_PRIME = lambda x: (
  0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
)


@pytest.mark.parametrize("name,f,fprime", [
    ("tanh", math.tanh, lambda x: 1 / math.cosh(x) ** 2),
    ("gelu", GELU, GELU_PRIME),
])
@pytest.mark.parametrize("q1,q2,rho", [(1.0, 1.0, 0.3), (0.5, 2.0, -0.7), (3.0, 1.5, 0.95)])
@float64
def test_numerical_activation_matches_scipy(name, f, fprime, q1, q2, rho):
  act = mt.get_activation(name)
  q12 = rho * math.sqrt(q1 * q2)
  assert float(act.kernel(q1, q2, q12)) == pytest.approx(
      _scipy_expectation(f, f, q1, q2, rho), abs=1e-9)
  assert float(act.derivative_kernel(q1, q2, q12)) == pytest.approx(
      _scipy_expectation(fprime, fprime, q1, q2, rho), abs=1e-9)
  mean, _ = integrate.quad(lambda z: f(math.sqrt(q1) * z) * math.exp(-z * z / 2), -12, 12,
                           epsabs=1e-14)
  assert float(act.mean(q1)) == pytest.approx(mean / math.sqrt(2 * math.pi), abs=1e-11)


@float64
def test_relu_kernel_is_homogeneous_dual():
  # E[φ(u)φ(v)] = √(q1 q2) φ̂(ρ) (the paper's eq 3-4), φ̂ written independently.
  q1, q2, rho = 0.7, 2.3, np.linspace(-1, 1, 21)
  k = mt.ReLU().kernel(q1, q2, rho * math.sqrt(q1 * q2))
  np.testing.assert_allclose(k, math.sqrt(q1 * q2) * relu_dual_np(rho), atol=1e-15)
  assert float(mt.ReLU().mean(2.0)) == pytest.approx(math.sqrt(2.0 / (2 * math.pi)), abs=1e-16)


q_st = st.floats(0.01, 10.0)
rho_st = st.floats(-1.0, 1.0)


@pytest.mark.parametrize("name", ["relu", "erf", "identity"])
@given(q1=q_st, q2=q_st, rho=rho_st)
@float64
def test_kernel_symmetric_and_cauchy_schwarz(name, q1, q2, rho):
  act = mt.get_activation(name)
  q12 = rho * math.sqrt(q1 * q2)
  k12, k21 = float(act.kernel(q1, q2, q12)), float(act.kernel(q2, q1, q12))
  assert k12 == pytest.approx(k21, rel=1e-13, abs=1e-15)
  bound = math.sqrt(float(act.second_moment(q1)) * float(act.second_moment(q2)))
  assert abs(k12) <= bound * (1 + 1e-12) + 1e-15
  d = float(act.derivative_kernel(q1, q2, q12))
  assert np.isfinite(d) and d >= -1e-15  # E[φ'φ'] >= 0 for these monotone φ


def test_get_activation_errors_name_the_parameter():
  with pytest.raises(ValueError, match="activation must be one of"):
    mt.get_activation("sigmoidish")
  with pytest.raises(TypeError, match="activation"):
    mt.get_activation(3.0)
  assert isinstance(mt.get_activation(jnp.sin), mt.Numerical)


# ----------------------------------------------------------------------------------------------
# Numerical quadrature at every scale: q = 1e-6 .. 1e6 (issue 10).
# ----------------------------------------------------------------------------------------------
def _expit(x):
  return 0.5 * (1.0 + math.tanh(0.5 * x))


_ONE_D = {  # φ and φ', written independently of the library
    "tanh": (math.tanh, lambda x: 1.0 - math.tanh(x) ** 2),
    "gelu": (GELU, GELU_PRIME),
    "swish": (lambda x: x * _expit(x), lambda x: _expit(x) * (1.0 + x * (1.0 - _expit(x)))),
    "softplus": (lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))), _expit),
    "relu_numerical": (lambda x: max(x, 0.0), lambda x: float(x > 0)),
    "leaky_relu_numerical": (lambda x: x if x > 0 else 0.01 * x, lambda x: 1.0 if x > 0 else 0.01),
    "erf_numerical": (math.erf, lambda x: 2.0 / math.sqrt(math.pi) * math.exp(-x * x)),
}


def _scipy_gauss(f, q):
  """E[f(x)], x ~ N(0, q), by scipy's adaptive quad in x, split at 0 and at ±2^j (j = -4..6)."""
  s = math.sqrt(q)
  density = lambda x: f(x) * math.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q)
  points = sorted({0.0} | {sign * 2.0**j for j in range(-4, 7) for sign in (1, -1)})
  edges = [-12 * s] + [p for p in points if abs(p) < 12 * s] + [12 * s]
  return sum(integrate.quad(density, a, b, epsabs=0, epsrel=1e-12, limit=400)[0]
             for a, b in zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("name", sorted(_ONE_D))
@float64
def test_one_dimensional_expectations_match_scipy_from_1e_6_to_1e6(name):
  """E[φ²], E[φ'²] (relative) and E[φ] (relative to √E[φ²]) to 1e-11 over twelve decades of q.

  With panels fixed in z (the rule before issue 10) GELU's E[φ'²] was 5e-4 off at q = 1000."""
  f, fprime = _ONE_D[name]
  act = mt.get_activation(name)
  q = 10.0 ** np.arange(-6, 7, 2)
  m2, d2, m = (np.asarray(v) for v in (act.second_moment(q), act.derivative_second_moment(q),
                                       act.mean(q)))
  for i, qi in enumerate(q):
    e2 = _scipy_gauss(lambda x: f(x) ** 2, qi)
    assert m2[i] == pytest.approx(e2, rel=1e-11), ("E[φ²]", qi)
    assert d2[i] == pytest.approx(_scipy_gauss(lambda x: fprime(x) ** 2, qi), rel=1e-11), qi
    assert abs(m[i] - _scipy_gauss(f, qi)) <= 1e-11 * math.sqrt(e2), ("E[φ]", qi)


@pytest.mark.parametrize("name", ["relu", "erf", "leaky_relu"])
@pytest.mark.parametrize("log_q", [pytest.param(-6, marks=pytest.mark.slow),
                                   pytest.param(0, marks=pytest.mark.slow), 6])
@float64
def test_two_dimensional_quadrature_matches_closed_forms_at_every_scale(name, log_q):
  """Kinked (relu, leaky) and steep (erf at q = 1e6: a step of width 1e-3 in z) integrands,
  including ρ -> ±1, against the closed forms, relative to √(E[·²] E[·²])."""
  closed, numerical = mt.get_activation(name), mt.get_activation(name + "_numerical")
  rho = np.array([0.3, -0.7, 0.999, 0.999999, -0.99999, 1.0, -1.0])
  q1 = 10.0**log_q * np.linspace(0.5, 2.0, rho.size)
  q2 = q1[::-1].copy()
  q12 = rho * np.sqrt(q1 * q2)
  for method, moment in (("kernel", "second_moment"),
                         ("derivative_kernel", "derivative_second_moment")):
    scale = np.sqrt(getattr(closed, moment)(q1) * getattr(closed, moment)(q2))
    err = np.abs(getattr(closed, method)(q1, q2, q12) - getattr(numerical, method)(q1, q2, q12))
    assert np.max(err / scale) < 1e-10, method


def test_kinks_and_jumps_of_a_callable_are_found():
  kinks, jumps = mt.find_kinks(lambda x: jnp.maximum(x - 0.3, 0.0))
  assert kinks == (0.3,) and jumps == ()
  assert mt.find_kinks(jax.nn.relu6) == ((0.0, 6.0), ())
  assert mt.find_kinks(jnp.sign) == ((), (0.0,))
  assert mt.find_kinks(jnp.tanh) == ((), ())
  assert mt.find_kinks(lambda x: jnp.tanh(30 * x)) == ((), ())  # steep but smooth


@float64
@pytest.mark.slow
def test_a_kinked_callable_is_accurate_and_warned_about():
  """`lambda z: max(z, 0)` used to give E[φ'φ'] ~1e-3 off; now its kink is found and declared."""
  with pytest.warns(UserWarning, match="kink at x = 0"):
    act = mt.get_activation(lambda z: jnp.maximum(z, 0.0))
  assert act.kinks == (0.0,)
  q12 = np.array([0.5, 0.99999, -0.3])
  np.testing.assert_allclose(act.derivative_kernel(1.0, 1.0, q12),
                             mt.ReLU().derivative_kernel(1.0, 1.0, q12), atol=1e-11)


def test_a_jump_refuses_the_derivative_kernel():
  with pytest.warns(UserWarning, match="jump at x = 0"):
    act = mt.get_activation(jnp.sign)
  with jax.enable_x64(True):
    # E[sign u sign v] = (2/π) arcsin ρ, exact with the jump as a breakpoint.
    assert float(act.kernel(1.0, 1.0, 0.5)) == pytest.approx(2 / math.pi * math.asin(0.5),
                                                              abs=1e-12)
  with pytest.raises(ValueError, match="Dirac delta"):
    act.derivative_kernel(1.0, 1.0, 0.5)


def test_gelu_smoothing_closed_form_matches_scipy():
  """E[gelu(x + √v z)] and E[gelu'(x + √v z)]: the closed forms behind GELU's 1-D kernels."""
  from mimictheory._src.activations import _gelu_smoothed
  for x, v in [(0.0, 1.0), (1.3, 0.2), (-2.0, 5.0), (4.0, 1e-3)]:
    g, dg = (float(a) for a in float64(_gelu_smoothed)(x, v))
    s = math.sqrt(v)
    assert g == pytest.approx(gauss_expectation(lambda z: GELU(x + s * z)), abs=1e-12)
    assert dg == pytest.approx(gauss_expectation(lambda z: GELU_PRIME(x + s * z)), abs=1e-12)


@pytest.mark.parametrize("log_q", [pytest.param(-6, marks=pytest.mark.slow),
                                   pytest.param(0, marks=pytest.mark.slow), 2, 6])
def test_gelu_one_dimensional_kernels_match_the_two_dimensional_rule(log_q):
  """The smoothed 1-D route against the general 2-D quadrature (an independent rule), with
  unequal variances and ρ up to ±1, relative to √(E[·²] E[·²])."""
  import dataclasses
  gelu = mt.get_activation("gelu")
  plain = dataclasses.replace(gelu, smoothed=None)
  q1 = 10.0**log_q
  q2 = 0.3 * q1
  rho = np.array([-1.0, -0.99999, -0.4, 0.0, 0.6, 0.995, 0.9999999, 1.0])
  q12 = rho * math.sqrt(q1 * q2)
  for name, moment in (("kernel", "second_moment"),
                       ("derivative_kernel", "derivative_second_moment")):
    ours = np.asarray(getattr(gelu, name)(q1, q2, q12))
    ref = np.asarray(getattr(plain, name)(q1, q2, q12))
    scale = math.sqrt(float(getattr(gelu, moment)(q1)) * float(getattr(gelu, moment)(q2)))
    assert np.max(np.abs(ours - ref)) / scale < 1e-12, name
