"""CIFAR models with the norm switch: shapes, what weight mean covers and skips, the residual
scalars, and the compiled training-step memory of BN against MimicNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mimictheory as mt
from mimictheory._src.memory import train_step_memory
from mimictheory.nn import MODELS, CentredKernel, ResidualScalar, make_model, project_weight_mean

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), dtype=jnp.float32)


@pytest.mark.parametrize("name", [name if name == "resnet18" else
                                  pytest.param(name, marks=pytest.mark.slow) for name in MODELS])
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_step_memory_counts_the_donated_state_once_and_mimicnorm_needs_less():
  """XLA's arguments are exactly the state (parameters, BN statistics, optimiser) plus the
  batch, counted here independently; the updated state aliases its donated input (it used to
  be counted twice); MimicNorm keeps no BN activations for the backward pass."""
  from mimictheory._src.train import optimizer
  steps = {}
  for norm in ("bn", "mimic"):
    step = steps[norm] = train_step_memory("resnet18", norm, batch=32, classes=10, width=0.25)
    net = make_model("resnet18", classes=10, norm=norm, width=0.25)
    state = sum(a.nbytes for a in jax.tree_util.tree_leaves(nnx.state((net, optimizer(net, 0.1)))))
    batch = 32 * 32 * 32 * 3 * 4 + 32 * 4
    assert step.argument_bytes == state + batch
    assert step.alias_bytes >= state - 4096  # every updated buffer reuses its input
    assert (
      step.total_bytes
      == step.argument_bytes + step.output_bytes - step.alias_bytes + step.temp_bytes
    )
  assert steps["mimic"].total_bytes < 0.9 * steps["bn"].total_bytes


def test_conv_signal_metrics_bn_versus_plain():
  """Every conv reports its metrics; a plain VGG's inputs grow alike with depth (correlation
  towards 1, as T predicts), MimicNorm's stay apart (T̄)."""
  from mimictheory.nn import signals
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 32, 32, 3)), dtype=jnp.float32)
  off = ~np.eye(6, dtype=bool)
  mean_corr = {}
  for norm in ("none", "mimic"):
    metrics = signals(make_model("vgg16", classes=10, norm=norm, width=0.25), x)
    assert isinstance(metrics, mt.Signal)  # the MLP's type and words
    assert metrics.mean.shape == metrics.variance.shape == (13,)  # VGG16: thirteen convs
    assert metrics.correlation.shape == (13, 6, 6) and metrics.q.shape == (13, 6)
    mean_corr[norm] = float(np.asarray(metrics.correlation[-1])[off].mean())
  assert mean_corr["none"] > 0.95 and mean_corr["mimic"] < mean_corr["none"] - 0.2


def test_residual_init_is_configurable():
  model = make_model("resnet18", classes=10, norm="mimic", width=0.125,
                     residual_init=lambda block, convs: 1.0 / block**0.5)
  assert float(model.blocks[3].scale.scale[...]) == pytest.approx(0.5)
  const = make_model("resnet18", classes=10, norm="none", width=0.125, residual_init=0.0)
  assert float(const.blocks[0].scale.scale[...]) == 0.0  # SkipInit-like
  with pytest.raises(ValueError, match="residual_init"):
    make_model("resnet18", residual_init=-1.0, width=0.125)


def test_signals_restore_the_training_mode():
  """signals() runs in eval mode and then gives every BN its own mode back (it used to leave
  the model in eval mode: BN then trained on running statistics)."""
  from mimictheory.nn import signals
  model = make_model("resnet18", classes=10, norm="bn", width=0.125)
  model.train()
  signals(model, X)
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
  assert bns and not any(bn.use_running_average for bn in bns)
  model.eval()
  signals(model, X)
  assert all(bn.use_running_average for bn in bns)


@pytest.mark.slow
def test_models_build_abstractly_and_under_jit(name="resnet18"):
  """The initial σw² (float64 theory) is computed eagerly even while NNX traces, so models
  build under nnx.eval_shape (abstract Orbax restore, sharded init) and nnx.jit."""
  abstract = nnx.eval_shape(lambda: make_model(name, classes=10, norm="mimic", width=0.125))
  leaves = jax.tree_util.tree_leaves(nnx.state(abstract))
  assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  built = nnx.jit(lambda: make_model(name, classes=10, norm="mimic", width=0.125))()
  eager = make_model(name, classes=10, norm="mimic", width=0.125)
  for a, b in zip(jax.tree_util.tree_leaves(nnx.state(built)),
                  jax.tree_util.tree_leaves(nnx.state(eager))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", ["fixup", "skipinit"])
def test_fixup_and_skipinit_blocks_are_the_identity_at_init(norm):
  """Fixup: zero last conv per branch and zero classifier; SkipInit: branch scalar 0. Either
  way every identity-shortcut block returns its (non-negative) input unchanged."""
  model = make_model("resnet18", classes=10, norm=norm, width=0.125)
  x = jnp.abs(X[:, :, :, :1] * jnp.ones((1, 1, 1, model.blocks[0].convs[0].kernel.shape[2])))
  for block in model.blocks[:2]:  # stage 1: no projection
    np.testing.assert_array_equal(np.asarray(block(x)), np.asarray(x))
  if norm == "fixup":
    assert all(float(jnp.abs(b.convs[-1].kernel[...]).max()) == 0.0 for b in model.blocks)
    assert float(jnp.abs(model.classifier.kernel[...]).max()) == 0.0
    assert float(model.blocks[0].scale.scale[...]) == 1.0
  else:
    assert all(float(b.scale.scale[...]) == 0.0 for b in model.blocks)
  assert not jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))


@pytest.mark.slow
def test_fixup_rescales_the_other_branch_convs_by_l_to_the_minus_one_over_2m_minus_2():
  """ResNet50: L = 16 bottleneck branches of m = 3 convs: He's std times 16^(-1/4); ResNet18:
  L = 8, m = 2: times 8^(-1/2). He's variance on the fan-out k²·c_out, as the official
  `resnet_fixup.py` (on the fan-in until issue 21). Checked on the kernels' sample variances."""
  for name, factor in (("resnet18", 8.0**-0.5), ("resnet50", 16.0**-0.25)):
    model = make_model(name, classes=10, norm="fixup", width=0.25)
    for block in model.blocks[-2:]:
      kernel = np.asarray(block.convs[0].kernel[...])
      fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
      expected = 2.0 / fan_out * factor**2
      assert kernel.var() == pytest.approx(expected, rel=5 * np.sqrt(2 / kernel.size))


def test_baselines_are_for_residual_models_only():
  with pytest.raises(ValueError, match="norm"):
    make_model("vgg11", classes=10, norm="fixup", width=0.125)
