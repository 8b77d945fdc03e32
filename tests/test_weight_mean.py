"""The weight-mean kernels against an independent NumPy recursion and NumPy networks, and a
planted bug (the input centring removed) that these checks and the library's Monte Carlo catch.

Lemma 1 and eq 10: a dense layer with centred weights W̄ = W - mean_in(W) (fan-in n) maps
kernels as K' = σw² (n-1)/n (E[φ(u)φ(v)] - E[φ(u)] E[φ(v)]) + σb²; the input layer centres the
inputs exactly, W̄x = W(x - x̄). Written here from the closed forms, not from the library.
"""
import numpy as np
import pytest

import mimictheory as mt
from conftest import uncentred_input_layer

# Inputs whose rows have clearly different feature means, so that centring them matters.
X = np.random.default_rng(11).normal(size=(6, 16)) + np.linspace(-1.5, 1.5, 6)[:, None]


def _relu(q1, q2, q12):
  """(E[φφ], E[φ'φ'], E[φ] for q1, E[φ] for q2) of ReLU (Cho & Saul; paper eq 4)."""
  root = np.sqrt(np.outer(q1, q2))
  rho = np.clip(q12 / root, -1, 1)
  theta = np.arccos(rho)
  k = root * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
  return k, (np.pi - theta) / (2 * np.pi), np.sqrt(q1 / (2 * np.pi)), np.sqrt(q2 / (2 * np.pi))


def _erf(q1, q2, q12):
  """The same for erf (Williams 1997); E[erf(u)] = 0."""
  a = np.outer(1 + 2 * q1, 1 + 2 * q2)
  k = 2 / np.pi * np.arcsin(np.clip(2 * q12 / np.sqrt(a), -1, 1))
  return k, 4 / np.pi / np.sqrt(a - 4 * q12**2), np.zeros_like(q1), np.zeros_like(q2)


def numpy_kernels(x, depth, activation, sw2, sb2, norm, fan_in=None, centre_inputs=True):
  """NNGP and NTK of neural-tangents' dense network with `norm` in {"none", "weight_mean"}."""
  duals = {"relu": _relu, "erf": _erf}[activation]
  mean = norm == "weight_mean"
  f = (fan_in - 1) / fan_in if mean and fan_in else 1.0
  x = x - x.mean(axis=1, keepdims=True) if mean and centre_inputs else x
  k = sw2 * x @ x.T / x.shape[1] + sb2
  ntk = k.copy()
  for _ in range(depth):
    q = np.diag(k).copy()
    e_phiphi, e_slopes, m1, m2 = duals(q, q, k)
    k = sw2 * f * (e_phiphi - (np.outer(m1, m2) if mean else 0.0)) + sb2
    ntk = k + sw2 * f * e_slopes * ntk
  return k, ntk


@pytest.mark.parametrize("activation, sw2, sb2", [("relu", 2.5, 0.1), ("erf", 1.7, 0.2)])
@pytest.mark.parametrize("norm, fan_in", [("none", None), ("weight_mean", None),
                                          ("weight_mean", 64)])
def test_kernels_match_an_independent_numpy_recursion(activation, sw2, sb2, norm, fan_in):
  k, ntk = numpy_kernels(X, 6, activation, sw2, sb2, norm, fan_in)
  out = mt.kernels(X, depth=6, activation=activation, sw2=sw2, sb2=sb2, norm=norm, fan_in=fan_in)
  np.testing.assert_allclose(out.nngp, k, rtol=1e-11)
  np.testing.assert_allclose(out.ntk, ntk, rtol=1e-11)
  if norm == "weight_mean":  # the reference has power: without centring it is far off
    uncentred = numpy_kernels(X, 6, activation, sw2, sb2, norm, fan_in, centre_inputs=False)[0]
    assert np.abs(uncentred - k).max() > 0.05 * np.abs(k).max()


def _numpy_network_nngp(x, depth, sw2, sb2, width, draws, seed):
  """Output-layer NNGP of NumPy ReLU networks with centred weights, (mean, standard error)."""
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(draws):
    h = x
    for _ in range(depth + 1):
      fan_in = h.shape[1]
      w = rng.normal(scale=np.sqrt(sw2 / fan_in), size=(fan_in, width))
      w -= w.mean(axis=0, keepdims=True)  # W̄: every unit's incoming weights sum to 0
      b = rng.normal(scale=np.sqrt(sb2), size=width)
      pre = (np.maximum(h, 0) if h is not x else h) @ w + b
      h = pre
    samples.append(h @ h.T / width)  # mean over the output units of this draw
  samples = np.array(samples)
  return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(draws)


def test_numpy_weight_mean_networks_match_the_kernels_and_reject_uncentred_theory():
  """Monte Carlo over NumPy networks (no library code): z-scores against `mt.kernels` within
  4.5, against the same theory without the input centring far outside."""
  width, depth, sw2, sb2 = 512, 2, 2.5, 0.1
  mean, se = _numpy_network_nngp(X, depth, sw2, sb2, width, draws=48, seed=0)
  theory = mt.kernels(X, depth=depth, sw2=sw2, sb2=sb2, norm="weight_mean", fan_in=width).nngp
  z = (mean - theory) / se
  assert np.abs(z).max() < 4.5, z
  wrong = numpy_kernels(X, depth, "relu", sw2, sb2, "weight_mean", width, centre_inputs=False)[0]
  assert np.abs((mean - wrong) / se).max() > 10


def test_planted_bug_is_caught_by_the_reference_and_by_monte_carlo():
  net = mt.finite_network("relu", depth=2, width=256, sw2=None, norm="weight_mean")
  mc = mt.monte_carlo_kernels(net, X, draws=32, seed=1)
  correct = net.theory_kernels(X)
  assert np.abs(mc.nngp.z_scores(correct.nngp)).max() < 4.5
  with uncentred_input_layer():
    buggy = net.theory_kernels(X)
  assert np.abs(mc.nngp.z_scores(buggy.nngp)).max() > 10  # the Monte Carlo test fails ...
  reference = numpy_kernels(X, 2, "relu", float(net.sw2), 0.0, "weight_mean", 256)[0]
  assert np.abs(buggy.nngp - reference).max() > 0.05 * np.abs(reference).max()  # ... and this
  np.testing.assert_allclose(correct.nngp, reference, rtol=1e-11)
