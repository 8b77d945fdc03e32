"""jit, grad and vmap of the analytic core, against independent finite differences and closed forms.

The gradients come from JAX's autodiff (with the implicit function theorem at the fixed points
q* and c*); the references re-solve the plain float64 functions at shifted σw², σb² or inputs
(central differences), or are closed forms. Nothing here compares a function with itself.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mimictheory as mt

X = np.random.default_rng(3).normal(size=(5, 4))


def central_difference(f, x0, h):
  return (float(f(x0 + h)) - float(f(x0 - h))) / (2 * h)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("activation, norm, wrt, at, sb2", [
    ("erf", "none", "sw2", 1.5, 0.1),      # ordered, q* finite
    ("erf", "none", "sb2", 1.5, 0.1),
    pytest.param("tanh", "none", "sw2", 1.2, 0.05, marks=pytest.mark.slow),  # numerical
    ("erf", "weight_mean", "sb2", 2.5, 0.2),
    pytest.param("gelu", "weight_mean", "sw2", 2.0, 0.1, marks=pytest.mark.slow),
])
def test_grad_of_chi1_matches_finite_differences(x64, activation, norm, wrt, at, sb2):
  def chi(v):
    kwargs = {"sw2": at, "sb2": sb2, wrt: v}
    return mt.chi1(activation, norm=norm, **kwargs)

  x0 = at if wrt == "sw2" else sb2
  grad = float(jax.grad(chi)(x0))
  reference = central_difference(chi, x0, 1e-5)
  assert grad == pytest.approx(reference, rel=1e-7, abs=1e-9)
  assert abs(grad) > 1e-3  # a real dependence, not 0 = 0


def test_grad_of_chi1_closed_forms(x64):
  # ReLU, finite q*: χ1 = σw²/2, so ∂χ1/∂σw² = 1/2 and ∂χ1/∂σb² = 0 (Proposition 1).
  assert float(jax.grad(lambda s: mt.chi1("relu", sw2=s, sb2=0.3))(1.5)) == pytest.approx(0.5)
  assert float(jax.grad(lambda b: mt.chi1("relu", sw2=1.5, sb2=b))(0.3)) == 0.0
  # Weight mean at the stable σw² (Theorem 3): χ1 = (1 - σb²) / (1 - 1/π).
  slope = jax.grad(lambda b: mt.chi1("relu", sw2=None, sb2=b, norm="weight_mean"))(0.1)
  assert float(slope) == pytest.approx(-1 / (1 - 1 / math.pi), rel=1e-12)
  # Erf: V(q) = σw² (2/π) arcsin(2q/(1+2q)) + σb²; q* by implicit differentiation against a
  # direct solve of the closed form.
  def qstar_erf(sw2, sb2=0.1):
    q = 1.0
    for _ in range(200):
      q = sw2 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + sb2
    return q
  grad = float(jax.grad(lambda s: mt.qstar("erf", sw2=s, sb2=0.1))(1.5))
  assert grad == pytest.approx(central_difference(qstar_erf, 1.5, 1e-6), rel=1e-7)


@pytest.mark.parametrize("activation, norm, x", [
    ("relu", "none", X), ("relu", "weight_mean", X), ("relu", "batch_norm_paper", X),
    ("erf", "none", X), ("erf", "weight_mean", X),
    pytest.param("tanh", "none", X[:3], marks=pytest.mark.slow),
])
def test_grad_of_kernels_matches_finite_differences(x64, activation, norm, x):
  # A random projection of both Gram matrices: one reverse pass checks every entry.
  rng = np.random.default_rng(0)
  w_nngp, w_ntk = rng.normal(size=(2,) + (len(x), len(x)))

  def projection(s):
    k = mt.kernels(x, depth=3, activation=activation, sw2=s, sb2=0.1, norm=norm)
    return jnp.sum(w_nngp * k.nngp) + jnp.sum(w_ntk * k.ntk)

  grad = float(jax.grad(projection)(1.7))
  assert math.isfinite(grad)  # the diagonal (ρ = 1) included
  assert grad == pytest.approx(central_difference(projection, 1.7, 1e-5), rel=1e-7)


@pytest.mark.slow
def test_grad_of_the_ntk_with_respect_to_inputs(x64):
  def entry(x):
    return mt.kernels(x, depth=2, activation="relu", sw2=2.0, sb2=0.1).ntk[0, 1]

  grad = np.asarray(jax.grad(entry)(jnp.asarray(X)))
  fd = np.zeros_like(X)
  for index in np.ndindex(*X.shape):
    step = np.zeros_like(X)
    step[index] = 1e-6
    fd[index] = (float(entry(X + step)) - float(entry(X - step))) / 2e-6
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
  assert np.any(grad[2:] == 0) and np.any(grad[:2] != 0)  # only rows 0 and 1 matter


def test_implicit_gradients_of_cstar_and_depth_scales(x64):
  c = lambda s: mt.stable_correlation("erf", sw2=s, sb2=0.1)  # noqa: E731  chaotic: c* < 1
  assert float(c(3.0)) < 1
  assert float(jax.grad(c)(3.0)) == pytest.approx(central_difference(c, 3.0, 1e-5), rel=1e-6)
  xi = lambda s: mt.depth_scales("erf", sw2=s, sb2=0.1).xi_c  # noqa: E731
  assert float(jax.grad(xi)(1.2)) == pytest.approx(central_difference(xi, 1.2, 1e-5), rel=1e-6)


def test_jit_and_vmap_reproduce_the_plain_calls(x64):
  sw2 = np.array([1.0, 1.5, 2.5])
  plain = np.array([mt.chi1("erf", sw2=s, sb2=0.1) for s in sw2])
  mapped = jax.vmap(lambda s: mt.chi1("erf", sw2=s, sb2=0.1))(jnp.asarray(sw2))
  np.testing.assert_allclose(np.asarray(mapped), plain, rtol=1e-13)
  jitted = jax.jit(lambda x: mt.kernels(x, depth=4, norm="weight_mean", sw2=None))(X)
  plain_k = mt.kernels(X, depth=4, norm="weight_mean", sw2=None)
  np.testing.assert_allclose(np.asarray(jitted.ntk), plain_k.ntk, rtol=1e-12)
  batches = np.stack([X, 2 * X])
  per_batch = jax.vmap(lambda x: mt.kernels(x, depth=2).nngp)(jnp.asarray(batches))
  for out, x in zip(per_batch, batches):
    np.testing.assert_allclose(np.asarray(out), mt.kernels(x, depth=2).nngp, rtol=1e-12)
  spectrum = jax.jit(lambda s: mt.ntk_spectrum(X, depth=3, sw2=s))(2.0)
  np.testing.assert_allclose(np.asarray(spectrum.condition), mt.ntk_spectrum(X, depth=3).condition,
                             rtol=1e-10)


def test_with_x64_off_the_trace_still_runs_in_float64():
  assert not jax.config.jax_enable_x64
  # Near the critical line q* converges slowly; a float32 solve would stop ~1e-7 away.
  # σw² = 67/64 and σb² = 1/64 are exact in float32, so both calls see the same values.
  plain = mt.qstar("tanh", sw2=1.046875, sb2=0.015625)
  assert plain.dtype == np.float64  # the plain call: NumPy float64
  traced = jax.jit(lambda s: mt.qstar("tanh", sw2=s, sb2=0.015625))(1.046875)
  assert traced.dtype == jnp.float32  # the caller's precision at the boundary ...
  assert float(traced) == float(np.float32(plain))  # ... computed in float64, rounded once
  grad = jax.grad(lambda s: mt.kernels(X, depth=3, sw2=s, sb2=0.1).ntk.sum())(2.0)
  with jax.enable_x64(True):
    grad64 = jax.grad(lambda s: mt.kernels(X, depth=3, sw2=s, sb2=0.1).ntk.sum())(2.0)
  assert grad.dtype == jnp.float32 and float(grad) == float(np.float32(grad64))


def test_what_cannot_be_traced_says_so():
  with pytest.raises(TypeError, match=r"^kernels\(norm='batch_norm'\) cannot be traced"):
    jax.jit(lambda x: mt.kernels(x, depth=2, norm="batch_norm").nngp)(X)
  with pytest.raises(TypeError, match=r"^ntk_spectrum\(norm='batch_norm'\) cannot be traced"):
    jax.jit(lambda x: mt.ntk_spectrum(x, depth=2, norm="batch_norm").condition)(X)
  with pytest.raises(TypeError, match=r"^layer_kernels\(norm='batch_norm'\) cannot be traced"):
    jax.grad(lambda s: mt.layer_kernels(X, depth=2, sw2=s, norm="batch_norm").sum())(2.0)
  for call in (lambda s: mt.phase_diagram("erf", sw2=s, sb2=np.array([0.1])).chi1,
               lambda s: mt.fixed_points("erf", sw2=s).qstar,
               lambda s: mt.residual_kernels(X, depth=2, sw2=s).ntk):
    with pytest.raises(TypeError, match="takes concrete values only"):
      jax.jit(call)(jnp.array([1.5]))
  with pytest.raises(TypeError, match="x1 must be real"):
    jax.jit(lambda x: mt.kernels(x, depth=2).nngp)(X.astype(complex))
  with pytest.raises(ValueError, match="x1 must have 2 dimensions"):
    jax.jit(lambda x: mt.kernels(x, depth=2).nngp)(X[0])
