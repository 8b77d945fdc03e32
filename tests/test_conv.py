"""Convolutional networks: the theory of one description against the Flax models built from it.

neural-tangents checks the plain convolutional kernels (tests/test_stax.py, `make crosscheck`);
here the training library's own models at initialisation are held against them: the Flax
model of a VGG-style description (`nn.from_stax`), its per-layer correlations of input pairs
from `nn.signals` averaged over random initialisations, against the description's layer
kernels, within Monte Carlo error (z-scores) plus the O(1/channels) finite-width correction.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mimictheory as mt
from mimictheory import stax
from mimictheory.nn import from_stax, signals

IMAGES = np.random.default_rng(21).normal(size=(4, 8, 8, 3)) + 0.5  # channel means ≠ 0


def _vgg_style(weight_mean: bool, depth: int, channels: int):
  """3 × 3 SAME convolutions and ReLU, a Flatten and a Dense readout: He's σw² = 2 without
  weight mean, Theorem 3's stable σw² for the fan-in 9·channels with it."""
  sw2 = (float(mt.stable_sw2("relu", norm="weight_mean", fan_in=9 * channels)) if weight_mean
         else 2.0)
  conv = stax.Conv(channels, (3, 3), padding="SAME", W_std=math.sqrt(sw2),
                   weight_mean=weight_mean)
  return stax.serial(*[conv, stax.Relu()] * depth, stax.Flatten(), stax.Dense(10))


def _theory_correlations(net, x):
  """The correlation over positions and channels of every input pair after every Conv."""
  out = []
  for k in net.layer_kernels(x, after=stax.Conv, ntk=False):
    gram = np.asarray(k.nngp).reshape(*k.nngp.shape[:2], -1).mean(-1)  # Flatten's kernel
    d = np.sqrt(np.diag(gram))
    out.append(gram / np.outer(d, d))
  return np.stack(out)


@pytest.mark.parametrize("weight_mean", [True, False])
def test_the_flax_conv_stack_follows_the_convolutional_theory(weight_mean):
  depth, channels, models = 8, 64, 24
  net = _vgg_style(weight_mean, depth, channels)
  theory = _theory_correlations(net, IMAGES)
  x = IMAGES.astype(np.float32)
  samples = [np.asarray(signals(from_stax(net, x.shape, rngs=nnx.Rngs(seed)), x).correlation)
             for seed in range(models)]
  est = mt.Estimate.from_samples(np.stack(samples))
  off = ~np.eye(len(x), dtype=bool)
  slack = 3.0 / channels  # the O(1/channels) bias of a finite network
  z = (np.abs(est.mean - theory) - slack) / est.se
  assert np.max(z[:, off]) < 5, np.max(z[:, off])
  last = theory[-1][off].mean()
  if weight_mean:  # T̄ keeps the inputs apart (c* = 0 for ReLU at Theorem 3's σw²)
    assert abs(last) < 0.2 and abs(est.mean[-1][off].mean()) < 0.2
  else:  # the plain stack drifts towards correlation 1 (critical ReLU: by a power law)
    drift = theory[:, off].mean(axis=1)
    assert np.all(np.diff(drift) > 0) and last > 0.8
    assert est.mean[-1][off].mean() > est.mean[0][off].mean() + 0.2


def test_the_comparison_can_fail():
  """The theory of the plain stack is far outside the weight-mean models' error bars."""
  depth, channels = 8, 64
  plain = _theory_correlations(_vgg_style(False, depth, channels), IMAGES)
  wm = _vgg_style(True, depth, channels)
  x = IMAGES.astype(np.float32)
  samples = [np.asarray(signals(from_stax(wm, x.shape, rngs=nnx.Rngs(seed)), x).correlation)
             for seed in range(8)]
  est = mt.Estimate.from_samples(np.stack(samples))
  off = ~np.eye(len(x), dtype=bool)
  assert np.max(np.abs(est.mean - plain)[-1][off] / est.se[-1][off]) > 20



def _stack(norm: str, depth: int, channels):
  """3 × 3 SAME convolutions and ReLU (BN before each ReLU for "batch_norm"), as in Figures
  2-3 on convolutions; the theory's version ends in a GlobalAvgPool so that its layer kernels
  hold every pair of positions (the channel statistics need them)."""
  from mimictheory._src.figure_data import conv_stack
  layers, _ = conv_stack(norm, depth, channels)
  return layers


@pytest.mark.parametrize("norm", ["none", "weight_mean", "batch_norm"])
def test_the_flax_stacks_channel_statistics_follow_the_theory(norm):
  """Per layer, a Flax conv stack's channel statistics (`signals(..., batch_statistics=True)`:
  the average squared channel mean over the batch and positions, and the average channel
  variance) and its input-pair correlations, averaged over random initialisations, against
  the same description's kernels (`Kernel.unit_statistics`; BN exact at the batch of
  N·HW = 256 values per channel), within 5 standard errors plus the O(1/channels) bias."""
  depth, channels, models = 6, 64, 16
  net = stax.serial(*_stack(norm, depth, channels), stax.Flatten(), stax.Dense(10))
  theory_net = stax.serial(*_stack(norm, depth, None), stax.GlobalAvgPool())
  kernels = theory_net.layer_kernels(IMAGES, after=stax.Conv, ntk=False)
  stats = np.array([[float(v) for v in k.unit_statistics()] for k in kernels])  # (L, 2)
  x = IMAGES.astype(np.float32)
  runs = [signals(from_stax(net, x.shape, rngs=nnx.Rngs(seed)), x, batch_statistics=True)
          for seed in range(models)]
  for i, field in enumerate(("mean", "variance")):
    est = mt.Estimate.from_samples(np.stack([np.asarray(getattr(r, field)) for r in runs]))
    slack = 3.0 / channels * np.max(np.abs(stats[:, i]))
    z = (np.abs(est.mean - stats[:, i]) - slack) / est.se
    assert np.max(z) < 5, (field, est.mean, stats[:, i])
  gram = [np.asarray(k.nngp).reshape(len(IMAGES), len(IMAGES), 64, 64) for k in kernels]
  gram = np.stack([np.diagonal(g, axis1=2, axis2=3).mean(-1) for g in gram])
  d = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
  theory = gram / (d[:, :, None] * d[:, None, :])
  est = mt.Estimate.from_samples(np.stack([np.asarray(r.correlation) for r in runs]))
  off = ~np.eye(len(x), dtype=bool)
  z = (np.abs(est.mean - theory) - 3.0 / channels) / est.se
  assert np.max(z[:, off]) < 5, np.max(z[:, off])
  ratio = stats[:, 0] / stats[:, 1]  # squared spread of channel means / channel variance
  if norm == "none":  # the channels' means drift apart, layer after layer
    assert np.all(np.diff(ratio[1:]) > 0) and ratio[-1] > 1.5 * ratio[1], ratio
  else:  # weight mean and BN keep them together
    assert stats[-1, 0] < 0.5 * stats[-1, 1]


@pytest.mark.parametrize("norm", ["weight_mean",
                                  pytest.param("batch_norm", marks=pytest.mark.slow)])
def test_one_networks_kernel_approaches_the_theory_as_channels_to_the_minus_half(norm):
  """A weight-mean or BN conv stack's empirical NNGP (its Flatten output's covariance over
  units), network by network, against the convolutional theory (BN exact at the batch of
  N·HW) at 16, 64 and 256 channels: the RMS deviation falls as channels^(-1/2) (fluctuations
  over channels, a central limit), fitted slope within 0.15 of −1/2; the mean deviation (the
  bias, O(1/channels)) is below it."""
  x = jnp.asarray(IMAGES[:, :6, :6])
  theory = None
  rms = []
  for channels in (16, 64, 256):
    net = stax.serial(*_stack(norm, 3, channels), stax.Flatten())
    if theory is None:
      theory = np.asarray(net.kernel_fn(x).nngp)
    init_fn, apply_fn, _ = net

    @jax.jit
    def one(key, init_fn=init_fn, apply_fn=apply_fn):
      _, params = init_fn(key, x.shape)
      f = apply_fn(params, x)
      return f @ f.T / f.shape[1]

    with jax.enable_x64(True):
      samples = np.asarray(jax.lax.map(one, jax.random.split(jax.random.key(channels), 32)))
    dev = (samples - theory) / np.max(np.abs(theory))
    rms.append(np.sqrt(np.mean(dev**2)))
    assert np.max(np.abs(dev.mean(axis=0))) < rms[-1]
  slope = np.polyfit(np.log([16, 64, 256]), np.log(rms), 1)[0]
  assert abs(slope + 0.5) < 0.15, (slope, rms)
