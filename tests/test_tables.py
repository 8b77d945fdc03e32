"""One-dimensional tables and Mehler's series (issue 10) against direct quadrature."""

import jax
import numpy as np
import pytest

import mimictheory as mt
from mimictheory import stax
from mimictheory._src import tables
from mimictheory._src.precision import f64


@pytest.mark.parametrize("name", ["tanh", "gelu", "softplus", "relu_numerical"])
def test_moment_table_matches_direct_quadrature(name):
  """Off the table's nodes (random q over 24 decades) to 1e-12 relative."""
  act = mt.get_activation(name)
  q = 10.0 ** np.random.default_rng(1).uniform(-12, 12, 40)
  with jax.enable_x64(True):
    table = tables.moments_jit(tables.moment_table(act), f64(q))
  np.testing.assert_allclose(table[:, 0], act.second_moment(q), rtol=1e-12)
  np.testing.assert_allclose(table[:, 2], act.derivative_second_moment(q), rtol=1e-12)
  np.testing.assert_allclose(table[:, 1], act.mean(q), rtol=0,
                             atol=1e-12 * np.sqrt(np.max(act.second_moment(q))))


@pytest.mark.parametrize("name,q,rho", [("tanh", 2.5, 0.93), ("gelu", 30.0, 0.97),
                                        ("relu_numerical", 1.0, 0.99)])
def test_mehler_truncation_bound_holds(name, q, rho):
  """|series - 2-D quadrature| <= the Parseval bound, for the kernel and its derivative,
  including where the bound is large (a kink near ρ = 1)."""
  act = mt.get_activation(name)
  with jax.enable_x64(True):
    table = tables.coefficient_table(act, q / 10, q * 10, tables.ORDER)
    qq = f64(np.array([q]))
    a = table(qq)
    m = tables.moments_jit(tables.moment_table(act), qq)
    k, d, bk, bd = (float(v[0]) for v in tables.mehler(
        a, a, m[:, 0], m[:, 0], m[:, 2], m[:, 2], qq, qq, f64(np.array([rho])), False))
  exact_k = float(act.kernel(q, q, rho * q))
  exact_d = float(act.derivative_kernel(q, q, rho * q))
  assert abs(k - exact_k) <= bk + 1e-13 * abs(exact_k)
  assert abs(d - exact_d) <= bd + 1e-13 * abs(exact_d)


def _quadrature_kernels(x1, x2, name, depth, sw2, sb2, norm):
  """Every entry by 2-D quadrature (the route the series replaces), independent of it: the
  same description traced, where numerical activations integrate each entry in 2-D."""
  net = stax.mlp(depth, name, sw2, sb2, norm, width=None)
  with jax.enable_x64(True):
    out = jax.jit(lambda a, b: net.kernel_fn(a, b, ("nngp", "ntk")))(x1, x2)
  return np.asarray(out.nngp), np.asarray(out.ntk)


@pytest.mark.parametrize("name,norm", [pytest.param("tanh", "none", marks=pytest.mark.slow),
    pytest.param("gelu", "weight_mean", marks=pytest.mark.slow)])
def test_series_gram_matrices_match_2d_quadrature(name, norm, rng):
  x = rng.normal(size=(5, 5))
  x[1] = x[0] * 1.0001  # nearly the same direction: ρ close to 1
  out = mt.kernels(x, depth=3, activation=name, sw2=1.6, sb2=0.08, norm=norm)
  nngp, ntk = _quadrature_kernels(x, x, name, 3, 1.6, 0.08, norm)
  np.testing.assert_allclose(out.nngp, nngp, rtol=0, atol=1e-9 * np.max(np.abs(nngp)))
  np.testing.assert_allclose(out.ntk, ntk, rtol=0, atol=1e-9 * np.max(np.abs(ntk)))
  y = rng.normal(size=(3, 5))
  cross = mt.kernels(x, y, depth=2, activation=name, sw2=1.6, sb2=0.08, norm=norm)
  nngp, ntk = _quadrature_kernels(x, y, name, 2, 1.6, 0.08, norm)
  np.testing.assert_allclose(cross.ntk, ntk, rtol=0, atol=1e-9 * np.max(np.abs(ntk)))


@pytest.mark.slow
def test_kinked_numerical_gram_matrix_falls_back_and_matches_the_closed_form(rng):
  """relu_numerical: the series cannot converge near ρ = 1 (a_k² ~ k^(-5/2)); the bound sends
  those entries to the longer series and then to 2-D quadrature, and the result is ReLU's."""
  x = rng.normal(size=(4, 4))
  x[1] = x[0] + 1e-3
  act = mt.get_activation("relu_numerical")
  with jax.enable_x64(True):  # the first layer's Gram matrix: entries (0, 1) fall back
    k = 2.0 * x @ x.T / 4 + 0.1
    q = np.diag(k).copy()
    fallback = tables.gram_series(act, tables.tabulated(act), q, q, k / np.sqrt(np.outer(q, q)),
                                  True)[4]
  out = mt.kernels(x, depth=3, activation="relu_numerical", sw2=2.0, sb2=0.1)
  ref = mt.kernels(x, depth=3, activation="relu", sw2=2.0, sb2=0.1)
  assert fallback > 0
  np.testing.assert_allclose(out.nngp, ref.nngp, rtol=1e-9)
  np.testing.assert_allclose(out.ntk, ref.ntk, rtol=1e-9)
