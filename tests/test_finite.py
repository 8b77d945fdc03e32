"""Finite-width networks against the analytic theory: Monte Carlo within a few standard errors.

Every comparison is a z-score (mean - theory) / SE over independent random networks, with fixed
seeds. The finite-width bias is O(1/n) and is below the Monte Carlo error at these sizes, except
for BN, whose full-batch theory is the limit of an infinite batch (tested as such).
"""
import jax
import numpy as np
import pytest

import mimictheory as mt

SMOOTH_AND_RELU = [("relu", 2.0, 0.0, "none"), ("relu", None, 0.0, "weight_mean"),
                   ("erf", 1.5, 0.1, "none"), ("tanh", None, 0.05, "weight_mean")]


@pytest.fixture(scope="module")
def x():
  return np.random.default_rng(7).normal(size=(5, 12))


def _max_abs(z):
  z = np.asarray(z)
  return float(np.abs(z[np.isfinite(z)]).max())


# ----------------------------------------------------------------------------------------------
# One network: the layer-by-layer NTK is the Jacobian contraction.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "activation,norm,outputs",
  [pytest.param("relu", "none", 1, marks=pytest.mark.slow), ("erf", "weight_mean", 3),
   pytest.param("tanh", "none", 2, marks=pytest.mark.slow),
   pytest.param("gelu", "weight_mean", 1, marks=pytest.mark.slow)],
)
def test_layerwise_ntk_equals_jacobian_contraction(activation, norm, outputs, x):
  net = mt.finite_network(activation, depth=3, width=48, sw2=1.7, sb2=0.2, norm=norm,
                          outputs=outputs)
  x2 = x[:3] + 0.5
  with jax.enable_x64(True):
    params = net.init(jax.random.key(3), x.shape[1])
    fast, slow = net.ntk(params, x, x2), net.ntk_jacobian(params, x, x2)
    sym = net.ntk(params, x)
  assert fast.shape == (5, 3)
  np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=1e-12)
  np.testing.assert_allclose(sym, sym.T, rtol=1e-12)


def test_weight_mean_network_has_mean_free_weights(x):
  net = mt.finite_network("relu", depth=2, width=32, norm="weight_mean")
  with jax.enable_x64(True):
    params = net.init(jax.random.key(0), x.shape[1])
    # The effective weights act on centred inputs: adding a constant to every feature of the
    # input (or of a hidden layer) changes nothing.
    shifted = net.apply(params, x + 3.0)
    np.testing.assert_allclose(shifted, net.apply(params, x), atol=1e-12)


def test_batch_norm_network_normalises_every_hidden_layer(x):
  net = mt.finite_network("tanh", depth=3, width=40, norm="batch_norm")
  with jax.enable_x64(True):
    s = net.signal(net.init(jax.random.key(1), x.shape[1]), x)
  np.testing.assert_allclose(s.mean, 0.0, atol=1e-12)  # every unit has batch mean 0 ...
  np.testing.assert_allclose(s.variance, 1.0, atol=1e-12)  # ... and batch variance 1
  np.testing.assert_allclose(np.diagonal(s.correlation, axis1=1, axis2=2), 1.0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Monte Carlo against the analytic kernels, correlations and χ1.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation,sw2,sb2,norm", SMOOTH_AND_RELU)
def test_one_hidden_layer_kernels_are_exact_in_expectation(activation, sw2, sb2, norm, x):
  """With one hidden layer the pre-activations are exactly Gaussian: no bias even at n = 32."""
  net = mt.finite_network(activation, depth=1, width=32, sw2=sw2, sb2=sb2, norm=norm)
  mc = mt.monte_carlo_kernels(net, x, draws=400, seed=1, networks_per_call=100)
  theory = net.theory_kernels(x)
  assert _max_abs(mc.nngp.z_scores(theory.nngp)) < 4.5
  assert _max_abs(mc.ntk.z_scores(theory.ntk)) < 4.5
  # and the test has power: a 5% error in the theory would be seen
  assert _max_abs(mc.ntk.z_scores(1.05 * theory.ntk)) > 5


@pytest.mark.parametrize("activation,sw2,sb2,norm", [
    pytest.param(*case, marks=pytest.mark.slow) if case[3] == "none" or case[0] == "tanh"
    else case for case in SMOOTH_AND_RELU])  # relu with weight mean in the default run
def test_deep_kernels_and_correlations_match_theory(activation, sw2, sb2, norm, x):
  net = mt.finite_network(activation, depth=3, width=512, sw2=sw2, sb2=sb2, norm=norm)
  mc = mt.monte_carlo_kernels(net, x, draws=48, seed=2)
  theory = net.theory_kernels(x)
  assert _max_abs(mc.nngp.z_scores(theory.nngp)) < 4.5
  assert _max_abs(mc.ntk.z_scores(theory.ntk)) < 4.5
  corr = mt.monte_carlo_correlations(net, x, draws=48, seed=3)
  assert _max_abs(corr.z_scores(net.theory_correlations(x))) < 4.5


@pytest.mark.parametrize("activation,sw2,sb2,norm", [
    ("relu", 1.8, 0.0, "none"), ("relu", None, 0.0, "weight_mean"), ("erf", 1.5, 0.05, "none"),
    ("tanh", None, 0.05, "weight_mean")])
def test_chi1_from_layer_jacobian(activation, sw2, sb2, norm):
  net = mt.finite_network(activation, width=512, sw2=sw2, sb2=sb2, norm=norm)
  est = mt.monte_carlo_chi1(net, draws=32, rows=32, seed=4)
  theory = mt.chi1(activation, sw2=net.sw2, sb2=sb2, norm=norm, fan_in=512)
  assert abs(float(est.z_scores(theory))) < 4


@pytest.mark.slow
def test_empirical_correlation_map_is_t_and_tbar():
  """Per-layer correlation of one input pair: the map T (plain) and T̄ (weight mean) iterated."""
  e1, e2 = np.array([1.0, -1.0, 1.0, -1.0]) / 2, np.array([1.0, 1.0, -1.0, -1.0]) / 2
  x = np.stack([e1, 0.6 * e1 + 0.8 * e2])  # unit norms, mean-free features, ρ = 0.6
  rho = {}
  for norm in ("none", "weight_mean"):
    net = mt.finite_network("relu", depth=4, width=1024, sw2=None if norm != "none" else 2.0,
                            norm=norm, input_gain=4.0)
    corr = mt.monte_carlo_correlations(net, x, draws=32, seed=5)
    rho[norm] = net.theory_correlations(x)[:, 0, 1]
    assert _max_abs(corr.z_scores(net.theory_correlations(x))) < 4.5
  assert rho["none"][0] == pytest.approx(0.6) and rho["weight_mean"][0] == pytest.approx(0.6)
  # T (Proposition 1) drives the pair towards c* = 1, T̄ (Theorem 3) towards c* = 0
  assert np.all(np.diff(rho["none"]) > 0) and np.all(np.diff(rho["weight_mean"]) < 0)
  t, tbar = mt.correlation_map(0.6, "relu", 2.0), mt.correlation_map(0.6, "relu", None,
                                                                     norm="weight_mean",
                                                                     fan_in=1024)
  assert rho["none"][1] == pytest.approx(float(t), abs=1e-12)
  assert rho["weight_mean"][1] == pytest.approx(float(tbar), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Convergence with width, and batch norm's finite batch.
# ----------------------------------------------------------------------------------------------
def _slope(sizes, values):
  return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


@pytest.mark.slow
def test_finite_width_fluctuations_shrink_like_one_over_sqrt_width(x):
  """A single network's kernels deviate from the limit by O(n^-1/2): fitted over five widths."""
  widths = np.array([32, 64, 128, 256, 512])
  gaps = {"nngp": [], "ntk": []}
  for n in widths:
    net = mt.finite_network("relu", depth=2, width=int(n), sw2=2.0, sb2=0.1)
    samples = mt.sample_kernels(net, x, draws=24, seed=6)
    theory = net.theory_kernels(x)
    for name in gaps:
      dev = getattr(samples, name) - getattr(theory, name)
      gaps[name].append(np.sqrt(np.mean(dev**2)) / np.sqrt(np.mean(getattr(theory, name)**2)))
  for name, gap in gaps.items():
    assert np.all(np.diff(gap) < 0), (name, gap)
    assert -0.65 < _slope(widths, gap) < -0.35, (name, gap)


@pytest.mark.slow
def test_batch_norm_paper_chi1_is_the_large_batch_limit_with_statistics_fixed():
  """Theorem 2's χ1 = π/(π-1) (ReLU) is the infinite-batch limit of the layer Jacobian with the
  batch statistics held fixed (norm="batch_norm_paper"); the gap falls like 1/batch."""
  net = mt.finite_network("relu", width=512, norm="batch_norm_paper")
  theory = mt.chi1("relu", norm="batch_norm_paper")
  batches = np.array([32, 64, 128, 256, 512])
  est = [mt.monte_carlo_chi1(net, draws=32, rows=int(b), seed=8) for b in batches]
  gaps = np.array([float(e.mean) - theory for e in est])
  assert np.all(gaps > 0)
  assert -1.3 < _slope(batches, gaps) < -0.7, gaps
  # Richardson extrapolation to an infinite batch agrees with the theory within its error
  limit = 2 * est[-1].mean - est[-2].mean
  se = np.hypot(2 * est[-1].se, est[-2].se)
  assert abs(float(limit) - theory) < 4 * float(se)


@pytest.mark.slow
def test_residual_networks_match_residual_kernels():
  # a batch of 10: at small batches the BN NTK of one unit is heavy-tailed (E[1/|Gh|⁴] = ∞ for
  # B <= 5), which makes standard errors unreliable
  x = np.random.default_rng(5).normal(size=(10, 5))
  for norm, alpha in (("none", "official"), ("weight_mean", "sqrt"), ("batch_norm", "one")):
    net = mt.finite_network("relu", depth=2, width=160, sw2=2.0, sb2=0.1, norm=norm,
                            alpha=alpha)
    mc = mt.monte_carlo_kernels(net, x, draws=16, seed=2)
    theory = net.theory_kernels(x)
    for name in ("nngp", "ntk"):
      z = getattr(mc, name).z_scores(getattr(theory, name))
      # entries share the same draws, so their z-scores are correlated: RMS and max both
      assert np.sqrt(np.mean(z**2)) < 2.0 and np.abs(z).max() < 4.5, (norm, name, z)


# ----------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(width=1), "width"), (dict(depth=0), "depth"), (dict(norm="layer"), "norm"),
    (dict(sw2=-1.0), "sw2"), (dict(outputs=0), "outputs"), (dict(sb2=-0.1), "sb2")])
def test_bad_network_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mt.finite_network(**kwargs)


def test_bad_monte_carlo_arguments(x):
  net = mt.finite_network(width=8)
  with pytest.raises(ValueError, match="draws"):
    mt.monte_carlo_kernels(net, x, draws=1)
  with pytest.raises(TypeError, match="net"):
    mt.monte_carlo_kernels("relu", x)
  with pytest.raises(ValueError, match="x2"):
    mt.finite_network(norm="batch_norm", width=8).ntk(None, x, x)
  with pytest.raises(ValueError, match="rows"):
    mt.monte_carlo_chi1(net, rows=1)


def test_a_zero_input_has_correlation_zero_not_nan(x):
  """With σb² = 0 a zero input stays 0 at every layer: its correlation is undefined, and both
  the network's and the theory's are 0 there (the kernels' convention), the rest unchanged."""
  net = mt.finite_network("relu", depth=2, width=16, sw2=2.0, sb2=0.0)
  x0 = np.concatenate([x[:3], np.zeros((1, x.shape[1]))])
  with jax.enable_x64(True):
    s = net.signal(net.init(jax.random.key(0), x.shape[1]), x0)
  theory = net.theory_correlations(x0)
  for corr in (np.asarray(s.correlation), theory):
    assert np.isfinite(corr).all()
    assert np.all(corr[:, 3, :] == 0) and np.all(corr[:, :, 3] == 0)
  np.testing.assert_allclose(theory[:, :3, :3], net.theory_correlations(x[:3]), rtol=1e-14)
  np.testing.assert_allclose(np.diagonal(theory[:, :3, :3], axis1=1, axis2=2), 1.0, rtol=1e-14)


@pytest.mark.parametrize("norm,alpha", [("none", None), ("weight_mean", None),
                                        ("batch_norm", None), ("none", "official"),
                                        ("batch_norm", "sqrt"), ("weight_mean", "one")])
def test_the_finite_network_is_its_description(norm, alpha):
  """FiniteNetwork (stacked parameters, scanned layers, the fast empirical NTK) computes the
  same function as the `stax` description its theory comes from, on the same parameters."""
  x = np.random.default_rng(3).normal(size=(6, 5))
  net = mt.finite_network("relu", depth=3, width=32, sb2=0.1, norm=norm, outputs=2,
                          input_gain=0.5, alpha=alpha)
  with jax.enable_x64(True):
    params = net.init(jax.random.key(1), 5)
    ours = np.asarray(net.apply(params, x))
    theirs = np.asarray(net.description().apply_fn(net.description_params(params), x))
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-13 * np.abs(ours).max())
  assert np.abs(ours).max() > 0.1
