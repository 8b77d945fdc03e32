"""CIFAR models with the norm switch: shapes, what weight mean covers and skips, the residual
scalars, and the compiled training-step memory of BN against MimicNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mimictheory._src.memory import train_step_memory
from mimictheory.nn import MODELS, CentredKernel, ResidualScalar, make_model, project_weight_mean

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), dtype=jnp.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_models_run_with_bn_and_mimic(name):
  for norm in ("bn", "mimic"):
    model = make_model(name, classes=10, norm=norm, width=0.125)
    out = model(X)
    assert out.shape == (4, 10) and bool(jnp.all(jnp.isfinite(out)))
    stats = jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))
    if norm == "mimic":
      assert len(stats) == 2  # only the last BN's running mean and variance
      assert len(jax.tree_util.tree_leaves(nnx.state(model, CentredKernel))) > 0
    else:
      assert len(stats) > 2 and not jax.tree_util.tree_leaves(nnx.state(model, CentredKernel))


def test_shufflenet_depthwise_kernels_are_skipped():
  model = make_model("shufflenetv2", classes=10, norm="mimic", width=1.0)
  unit = model.units[1]
  assert not isinstance(unit.dw.kernel, CentredKernel)  # 3x3 depthwise: fan-in 9 < 50
  assert isinstance(unit.pw2.kernel, CentredKernel)  # pointwise, fan-in 58
  before = np.asarray(unit.dw.kernel[...]).copy()
  project_weight_mean(model)
  np.testing.assert_array_equal(np.asarray(unit.dw.kernel[...]), before)


def test_conv_weight_mean_survives_a_step_and_scalars_are_official():
  model = make_model("resnet18", classes=10, norm="mimic", width=0.125)
  scalars = [b.scale for b in model.blocks]
  assert all(isinstance(s, ResidualScalar) for s in scalars)
  assert float(scalars[2].scale[...]) == pytest.approx(1.2**2 / 3)  # block 3, two convs
  optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  y = jnp.arange(4) % 10

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(X), y).mean())(
        model)
    optimizer.update(model, grads)
    project_weight_mean(model)

  step(model, optimizer)
  for kernel in jax.tree_util.tree_leaves(nnx.state(model, CentredKernel)):
    kernel = np.asarray(kernel)
    means = kernel.mean(axis=tuple(range(kernel.ndim - 1)))
    assert np.abs(means).max() < 1e-6


def test_mimicnorm_step_needs_less_memory_than_bn():
  bn = train_step_memory("resnet18", "bn", batch=32, classes=10, width=0.25)
  mimic = train_step_memory("resnet18", "mimic", batch=32, classes=10, width=0.25)
  assert mimic.argument_bytes <= bn.argument_bytes  # no BN parameters or statistics
  assert mimic.total_bytes < 0.9 * bn.total_bytes  # no BN activations kept for backward


def test_conv_signal_metrics_bn_versus_plain():
  """Every conv reports its metrics; a plain VGG's inputs grow alike with depth (correlation
  towards 1, as T predicts), MimicNorm's stay apart (T̄)."""
  from mimictheory.nn import signals
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 32, 32, 3)), dtype=jnp.float32)
  off = ~np.eye(6, dtype=bool)
  mean_corr = {}
  for norm in ("none", "mimic"):
    metrics = signals(make_model("vgg16", classes=10, norm=norm, width=0.25), x)
    assert len(metrics) == 13  # VGG16: thirteen convs, in order
    assert metrics[0]["correlation"].shape == (6, 6) and metrics[0]["q"].shape == (6,)
    mean_corr[norm] = float(np.asarray(metrics[-1]["correlation"])[off].mean())
  assert mean_corr["none"] > 0.95 and mean_corr["mimic"] < mean_corr["none"] - 0.2


def test_residual_init_is_configurable():
  model = make_model("resnet18", classes=10, norm="mimic", width=0.125,
                     residual_init=lambda block, convs: 1.0 / block**0.5)
  assert float(model.blocks[3].scale.scale[...]) == pytest.approx(0.5)
  const = make_model("resnet18", classes=10, norm="none", width=0.125, residual_init=0.0)
  assert float(const.blocks[0].scale.scale[...]) == 0.0  # SkipInit-like
  with pytest.raises(ValueError, match="residual_init"):
    make_model("resnet18", residual_init=-1.0, width=0.125)
