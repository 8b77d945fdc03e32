"""Convolutional networks: the theory of one description against the Flax models built from it.

neural-tangents checks the plain convolutional kernels (tests/test_stax.py, `make crosscheck`);
here the training library's own models at initialisation are held against them: the Flax
model of a VGG-style description (`nn.from_stax`), its per-layer correlations of input pairs
from `nn.signals` averaged over random initialisations, against the description's layer
kernels, within Monte Carlo error (z-scores) plus the O(1/channels) finite-width correction.
"""
import math

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

