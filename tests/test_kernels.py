"""NNGP / NTK Gram matrices against naive independent implementations and their properties."""
import math

import numpy as np
import pytest

import mimictheory as mt
from conftest import relu_dual_np, relu_dual_prime_np, run_on_host_devices


def _data(rng, n=12, d=7):
  x = rng.standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(d)


def _relu_np(q1, q2, q12):
  rho = np.clip(q12 / np.sqrt(q1 * q2), -1, 1)
  return np.sqrt(q1 * q2) * relu_dual_np(rho), relu_dual_prime_np(rho)


def _erf_np(q1, q2, q12):
  a = (1 + 2 * q1) * (1 + 2 * q2)
  return 2 / np.pi * np.arcsin(2 * q12 / np.sqrt(a)), 4 / np.pi / np.sqrt(a - 4 * q12**2)


def _eq7_reference(x, depth, dual, sw2, sb2):
  """Θ = Σ_l K^l Π_{r>l} Ṫ(K^r) (paper eq 7), with explicit per-layer lists."""
  d = x.shape[1]
  ks = [sw2 * x @ x.T / d + sb2]
  slopes = []
  for _ in range(depth):
    k = ks[-1]
    q = np.diag(k)
    value, deriv = dual(q[:, None], q[None, :], k)
    ks.append(sw2 * value + sb2)
    slopes.append(sw2 * deriv)
  ntk = np.zeros_like(ks[0])
  for l, k in enumerate(ks):
    prod = np.ones_like(k)
    for s in slopes[l:]:
      prod = prod * s
    ntk += k * prod
  return ks[-1], ntk


@pytest.mark.parametrize("name,dual,sw2,sb2", [
    ("relu", _relu_np, 2.0, 0.0), ("relu", _relu_np, 1.6, 0.2), ("erf", _erf_np, 2.5, 0.1)])
def test_kernels_match_eq7_reference(name, dual, sw2, sb2, rng):
  x = _data(rng)
  nngp, ntk = _eq7_reference(x, 6, dual, sw2, sb2)
  out = mt.kernels(x, depth=6, activation=name, sw2=sw2, sb2=sb2)
  np.testing.assert_allclose(out.nngp, nngp, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(out.ntk, ntk, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["relu", "erf", "tanh"])
def test_gram_matrices_symmetric_psd(name, rng):
  x = _data(rng, n=10)
  out = mt.kernels(x, depth=4, activation=name, sw2=1.8, sb2=0.1)
  for m in (np.asarray(out.nngp), np.asarray(out.ntk)):
    np.testing.assert_allclose(m, m.T, atol=1e-13)
    assert np.linalg.eigvalsh(m).min() >= -1e-10 * np.abs(m).max()


@pytest.mark.parametrize("name,dual", [("relu", _relu_np), ("erf", _erf_np)])
def test_upper_tiles_give_the_whole_symmetric_matrix(name, dual, rng):
  """150 inputs: 3 x 3 tiles of 64 (the last padded), of which the 6 on and above the diagonal
  are computed. Against the NumPy eq 7 recursion, and exactly symmetric."""
  x = _data(rng, n=150)
  nngp, ntk = _eq7_reference(x, 7, dual, 1.7, 0.1)
  out = mt.kernels(x, depth=7, activation=name, sw2=1.7, sb2=0.1)
  np.testing.assert_allclose(out.nngp, nngp, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(out.ntk, ntk, rtol=1e-12, atol=1e-13)
  assert np.array_equal(out.ntk, out.ntk.T) and np.array_equal(out.nngp, out.nngp.T)
  # The cross-kernel path (row blocks, no symmetry) on a copy agrees off the diagonal (on it,
  # x·x from a matrix product and from a sum differ in the last bit, so ρ = 1 is not pinned).
  cross = mt.kernels(x, x.copy(), depth=7, activation=name, sw2=1.7, sb2=0.1)
  off = ~np.eye(len(x), dtype=bool)
  np.testing.assert_allclose(cross.ntk[off], out.ntk[off], rtol=1e-12)


def test_blocks_and_cross_kernels_agree(rng):
  x = _data(rng, n=23)
  full = mt.kernels(x, depth=5, activation="relu", sw2=None, norm="weight_mean")
  blocked = mt.kernels(x, depth=5, activation="relu", sw2=None, norm="weight_mean", block_size=5)
  np.testing.assert_allclose(blocked.ntk, full.ntk, atol=1e-13)
  cross = mt.kernels(x[:9], x[9:], depth=5, activation="relu", sw2=None, norm="weight_mean")
  np.testing.assert_allclose(cross.nngp, np.asarray(full.nngp)[:9, 9:], atol=1e-13)


def test_weight_mean_decorrelates_and_plain_relu_freezes(rng):
  """Eq 8 versus Theorem 3 on data: deep plain ReLU correlations -> 1, weight mean -> ~0."""
  x = np.abs(_data(rng, n=16)) + 0.5  # positively correlated inputs
  def mean_offdiag_corr(k):
    k = np.asarray(k)
    c = k / np.sqrt(np.outer(np.diag(k), np.diag(k)))
    return np.abs(c[~np.eye(len(c), dtype=bool)]).mean()
  plain = mt.kernels(x, depth=50, activation="relu", sw2=2.0)
  mimic = mt.kernels(x, depth=50, activation="relu", sw2=None, norm="weight_mean")
  assert mean_offdiag_corr(plain.nngp) > 0.99
  # Off-diagonal correlations of T̄ iterate towards 0 like T̄'(0)^l = 0.73^l (eq 10).
  assert mean_offdiag_corr(mimic.nngp) < 0.02


def _bn_reference(x, depth, sw2, sb2):
  """Full-batch BN after each hidden dense layer, written with explicit centring matrices."""
  n, d = x.shape
  h = np.eye(n) - np.ones((n, n)) / n
  pre = sw2 * x @ x.T / d + sb2
  ntk = pre.copy()
  for _ in range(depth):
    c = h @ pre @ h
    nu = np.trace(c) / n
    k_bn, ntk_bn = c / nu, h @ ntk @ h / nu
    q = np.diag(k_bn)
    value, deriv = _relu_np(q[:, None], q[None, :], k_bn)
    pre = sw2 * value + sb2
    ntk = pre + sw2 * deriv * ntk_bn
  return pre, ntk


def test_batch_norm_paper_kernels_match_reference(rng):
  """Theorem 2's approximation (norm="batch_norm_paper") against a hand recursion."""
  x = _data(rng, n=15)
  nngp, ntk = _bn_reference(x, 5, 2.0, 0.1)
  out = mt.kernels(x, depth=5, activation="relu", sw2=2.0, sb2=0.1, norm="batch_norm_paper")
  np.testing.assert_allclose(out.nngp, nngp, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(out.ntk, ntk, rtol=1e-12, atol=1e-13)


def test_ntk_spectrum_matches_kernels_and_shows_the_phases(rng):
  x = _data(rng, n=20)
  spec = mt.ntk_spectrum(x, depth=30, activation="relu", sw2=2.0)
  direct = np.linalg.eigvalsh(np.asarray(mt.kernels(x, depth=12, sw2=2.0).ntk))
  np.testing.assert_allclose(spec.eigenvalues[11], direct, rtol=1e-10, atol=1e-10)
  # Theorem 1: ordered (tanh, χ1 < 1) κ grows with depth; weight mean (chaotic) stays bounded.
  ordered = mt.ntk_spectrum(x, depth=60, activation="tanh", sw2=1.2, sb2=0.2)
  assert float(mt.chi1("tanh", 1.2, 0.2)) < 1
  assert ordered.condition[-1] > 5 * ordered.condition[4]
  chaotic = mt.ntk_spectrum(x, depth=60, activation="relu", sw2=None, norm="weight_mean")
  assert chaotic.condition[-1] < 3 * chaotic.condition[4]
  assert chaotic.condition[-1] < ordered.condition[-1] / 10


@pytest.mark.parametrize(
  "call,exc,match",
  [
    (lambda x: mt.kernels(x, depth=0), ValueError, "depth must be an integer >= 1"),
    (lambda x: mt.kernels(x[0]), ValueError, r"x1 must have 2 dimensions"),
    (lambda x: mt.kernels(x, x[:, :3]), ValueError, "x2 must have the same number of features"),
    (
      lambda x: mt.kernels(np.where(np.eye(*x.shape) > 0, np.nan, x)),
      ValueError,
      "x1 contains NaN",
    ),
    (lambda x: mt.kernels(x, depth=2.5), TypeError, "depth must be an integer"),
    (lambda x: mt.kernels(x, input_gain=0.0), ValueError, "input_gain must be > 0"),
    (lambda x: mt.kernels(x, sw2=np.array([1.0, 2.0])), ValueError, "sw2 must be a single"),
    (lambda x: mt.ntk_spectrum(x, sb2=[0.0, 0.1]), ValueError, "sb2 must be a single"),
    (lambda x: mt.kernels(x * (1 + 1j)), TypeError, "x1 must be real"),
  ],
)
def test_kernel_errors(call, exc, match, rng):
  with pytest.raises(exc, match=match):
    call(_data(rng))


def test_sharded_over_four_host_devices_matches_single_device(tmp_path):
  """jax.sharding over 4 forced CPU devices gives the same Gram matrix (in a subprocess, since
  the device count is fixed when JAX starts)."""
  script = (
      "import json, numpy as np, jax, mimictheory as mt\n"
      "x = np.random.default_rng(1).normal(size=(37, 6))\n"
      "ref = mt.kernels(x, depth=8, activation='erf', sw2=2.0, sb2=0.1)\n"
      "out = mt.kernels(x, depth=8, activation='erf', sw2=2.0, sb2=0.1, mesh=mt.row_mesh(),"
      " block_size=16)\n"
      "print(json.dumps({'devices': jax.device_count(),"
      " 'err': float(np.abs(np.asarray(out.ntk) - np.asarray(ref.ntk)).max())}))\n")
  result = run_on_host_devices(script, tmp_path, timeout=300)
  assert result["devices"] == 4
  assert result["err"] < 1e-13


from hypothesis import given, strategies as st  # noqa: E402


@given(seed=st.integers(0, 2**31 - 1), sw2=st.floats(0.5, 4.0), sb2=st.floats(0.0, 0.5),
       depth=st.integers(1, 12), norm=st.sampled_from(["none", "weight_mean"]))
def test_property_gram_matrices_symmetric_psd(seed, sw2, sb2, depth, norm):
  x = np.random.default_rng(seed).normal(size=(9, 5))
  out = mt.kernels(x, depth=depth, activation="erf", sw2=sw2, sb2=sb2, norm=norm)
  for m in (out.nngp, out.ntk):
    np.testing.assert_allclose(m, m.T, atol=1e-12 * np.abs(m).max())
    assert np.linalg.eigvalsh(m).min() >= -1e-10 * np.abs(m).max()


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_diagonal_is_pinned_whatever_the_block_size(name, rng):
  """ρ = 1 exactly on the diagonal for blocks of 1, 7 and 32 rows: the NTK diagonal is the same
  to the last bits (it used to move by 1.9e-8 relative with small blocks)."""
  x = rng.normal(size=(40, 9))
  whole = mt.kernels(x, depth=6, activation=name, sw2=2.0, sb2=0.05)
  for block in (1, 7, 32):
    out = mt.kernels(x, depth=6, activation=name, sw2=2.0, sb2=0.05, block_size=block)
    np.testing.assert_allclose(np.diag(out.ntk), np.diag(whole.ntk), rtol=1e-14)
    np.testing.assert_allclose(out.ntk, whole.ntk, rtol=1e-12)


@pytest.mark.parametrize("call,needle", [
    (lambda x: mt.kernels(x, sw2=1e6, depth=100), "kernels: the kernel exceeds float64"),
    (lambda x: mt.layer_kernels(x, sw2=4.0, depth=1100), "from depth 10"),
    (lambda x: mt.ntk_spectrum(x, sw2=1e6, depth=60), "ask for depth <="),
])
def test_overflow_is_a_clear_error_never_nan(call, needle, rng):
  """Inputs are finite, so inf or NaN in a kernel can only be float64 overflow: an error that
  says so (and from which depth), not a matrix of NaN."""
  with pytest.raises(mt.KernelOverflowError, match=needle):
    call(_data(rng))


def test_singular_ntk_keeps_infinite_condition_number(rng):
  """κ = ∞ (λmin <= 0 in the deep ordered phase) is a result, not an overflow. Numerically
  singular: λmin is at rounding level, so whether it comes out <= 0 (κ = ∞) or just above
  (κ ~ 1e16) depends on the last bits of the kernels."""
  spec = mt.ntk_spectrum(_data(rng), depth=120, activation="erf", sw2=0.5, sb2=0.05)
  eig = spec.eigenvalues[-1]
  assert np.isfinite(spec.eigenvalues).all() and abs(eig[0]) < 1e-14 * eig[-1]
  assert np.isinf(spec.condition[-1]) or spec.condition[-1] > 1e14
  assert spec.condition[0] < 1e6  # not singular at depth 1
