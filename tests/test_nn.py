"""MimicNorm layers in Flax NNX: weight mean, skipped kernels, the last BN, the initial scale, and
the signal propagation of a MimicNorm MLP at initialisation against the analytic T̄."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mimictheory as mt
from conftest import uncentred_input_layer
from mimictheory.nn import (
    MLP, CentredKernel, Dense, LastBatchNorm, ResidualScalar, centre_kernel, per_channel_fan_in,
    project_weight_mean)


def _kernels(model, kind):
  return jax.tree_util.tree_leaves(nnx.state(model, kind))


def test_centre_kernel_dense_and_conv():
  rng = np.random.default_rng(0)
  for shape in [(64, 32), (3, 3, 16, 32)]:
    w = jnp.asarray(rng.normal(1.0, 1.0, size=shape), dtype=jnp.float32)
    c = centre_kernel(w)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(np.mean(np.asarray(c), axis=axes), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(c - w), -np.asarray(w).mean(axis=axes, keepdims=True)
                               * np.ones(shape), atol=1e-6)  # subtracts exactly the mean
  assert per_channel_fan_in((3, 3, 16, 32)) == 144


def test_weight_mean_after_every_step_and_small_fan_in_skipped():
  model = MLP(8, 10, depth=3, width=64, norm="mimic", rngs=nnx.Rngs(0))
  # the input layer has fan-in 8 < 50: a plain Param, never centred
  assert isinstance(model.hidden[0].kernel, nnx.Param)
  assert not isinstance(model.hidden[0].kernel, CentredKernel)
  assert all(isinstance(layer.kernel, CentredKernel) for layer in model.hidden[1:])
  skipped_before = np.asarray(model.hidden[0].kernel[...]).copy()
  optimizer = nnx.Optimizer(model, optax.sgd(0.5, momentum=0.9), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 8)), dtype=jnp.float32)
  y = jnp.arange(32) % 10

  @nnx.jit
  def step(model, optimizer):
    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    project_weight_mean(model)

  for _ in range(3):
    step(model, optimizer)
    for kernel in _kernels(model, CentredKernel):
      assert np.abs(np.asarray(kernel).mean(axis=0)).max() < 1e-6
  # the step did change the skipped kernel (it trains), but projection never centred it
  after = np.asarray(model.hidden[0].kernel[...])
  assert not np.allclose(after, skipped_before)
  assert np.abs(after.mean(axis=0)).max() > 1e-3


def test_last_bn_has_no_parameters():
  bn = LastBatchNorm(10, rngs=nnx.Rngs(0))
  assert _kernels(bn, nnx.Param) == []
  stats = nnx.state(bn, nnx.BatchStat)
  assert len(jax.tree_util.tree_leaves(stats)) == 2  # running mean and variance
  out = bn(jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, size=(64, 10)),
                       dtype=jnp.float32))
  np.testing.assert_allclose(np.asarray(out).mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out).std(axis=0), 1.0, atol=1e-3)


def test_initial_scale_is_theorem_3():
  layer = Dense(512, 512, weight_mean=True, rngs=nnx.Rngs(3))
  w = np.asarray(layer.kernel[...])
  measured = w.var(axis=0).mean() * 512 * 512 / 511  # per-column variance of a centred column
  # A variance from m Gaussian entries has relative standard error √(2/m): allow 4.5 of them.
  tolerance = 4.5 * np.sqrt(2 / w.size)  # 1.2%
  assert measured == pytest.approx(float(mt.stable_sw2("relu", fan_in=512)), rel=tolerance)
  he = Dense(512, 512, weight_mean=False, rngs=nnx.Rngs(3))
  assert np.asarray(he.kernel[...]).var() * 512 == pytest.approx(2.0, rel=tolerance)


def test_residual_scalar_official_value():
  assert ResidualScalar.official(3, 2) == pytest.approx(1.44 / 3)
  scalar = ResidualScalar(0.5)
  assert float(scalar(jnp.ones(()))) == 0.5
  assert len(_kernels(scalar, nnx.Param)) == 1


def test_mimic_mlp_signal_propagation_matches_tbar():
  """Per-layer correlations of a MimicNorm MLP at initialisation = T̄ iterated (Theorem 3)."""
  width, depth = 512, 5
  # rows with distinct feature means, so that weight mean's input centring matters
  x = (np.random.default_rng(4).normal(size=(4, 64))
       + np.array([-1.0, -0.3, 0.4, 1.2])[:, None]).astype(np.float32)
  samples = np.stack([np.asarray(MLP(64, 10, depth=depth, width=width, norm="mimic",
                                     rngs=nnx.Rngs(seed)).signals(jnp.asarray(x)).correlation)
                      for seed in range(8)])
  est = mt.Estimate.from_samples(samples)

  def correlations():
    k = mt.layer_kernels(x, depth=depth, activation="relu", sw2=None, norm="weight_mean",
                         fan_in=width)
    d = np.sqrt(np.diagonal(k, axis1=1, axis2=2))
    return k / (d[:, :, None] * d[:, None, :])

  off = ~np.eye(4, dtype=bool)
  assert np.abs(est.z_scores(correlations())[:, off]).max() < 4.5
  # and the comparison has power: the theory with the input centring planted out is rejected
  with uncentred_input_layer():
    assert np.abs(est.z_scores(correlations())[:, off]).max() > 10
  # and the plain network's correlations rise instead (T, not T̄)
  plain = MLP(64, 10, depth=depth, width=width, norm="none", rngs=nnx.Rngs(0)).signals(
      jnp.asarray(x)).correlation
  assert np.mean(np.asarray(plain)[-1][off]) > np.mean(est.mean[-1][off]) + 0.2


def test_bad_norm():
  with pytest.raises(ValueError, match="norm"):
    MLP(8, 2, norm="group", rngs=nnx.Rngs(0))


def test_one_norm_vocabulary_across_theory_and_models():
  from mimictheory._src import norms
  from mimictheory.train import TrainConfig
  assert mt.NORMS == norms.THEORY_NORMS
  shared = set(norms.THEORY_NORMS) & set(norms.MODEL_NORMS)
  assert shared == {"none", "weight_mean", "batch_norm"}  # the same words mean the same thing
  # "bn" is another spelling of "batch_norm": the same model, one spelling in saved configs
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), dtype=jnp.float32)
  a = MLP(8, 3, depth=2, width=16, norm="bn", rngs=nnx.Rngs(0))
  b = MLP(8, 3, depth=2, width=16, norm="batch_norm", rngs=nnx.Rngs(0))
  assert a.norm == b.norm == "batch_norm"
  np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
  assert TrainConfig(norm="bn").validate().norm == "batch_norm"
  with pytest.raises(ValueError, match="norm must be one of 'batch_norm'"):
    MLP(8, 3, norm="batch_norm_paper", rngs=nnx.Rngs(0))  # a theory-only approximation
