"""The paper's networks as the official code builds them (issue 21): parameter counts and the
initialisation of every layer against rules written here from the official PyTorch code
(Kid-key/MimicNorm, Cifar100/models/ at d64fb51: VGG, SqueezeNet, ShuffleNetV2, ResNet)."""
import jax
import numpy as np
import pytest
from flax import nnx

from mimictheory._src.models import make_model
from mimictheory._src.nn import CentredKernel

# cfg 'A' and 'D' of the official vgg.py; 'M' is a 2x2 max pool
OFFICIAL_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
              "M"],
}


def official_vgg_parameters(name, classes, batch_norm):
  """Conv2d(cin, l, 3, padding=1, bias=True) [+ BatchNorm2d(l): weight and bias], then the
  classifier Linear(512, 4096), Linear(4096, 4096), Linear(4096, classes), all with bias."""
  total, cin = 0, 3
  for item in OFFICIAL_CFG[name]:
    if item == "M":
      continue
    total += 9 * cin * item + item + (2 * item if batch_norm else 0)
    cin = item
  return total + (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * classes + classes)


def _count(model):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
@pytest.mark.parametrize("norm", ["batch_norm", "mimic", "none"])
def test_vgg_parameter_count_is_the_official_one(name, norm):
  count = _count(make_model(name, classes=100, norm=norm))
  assert count == official_vgg_parameters(name, 100, norm == "batch_norm")
  if name == "vgg16" and norm != "batch_norm":
    assert round(count / 1e6, 1) == 34.0  # the figure for VGG16-CIFAR100
  light = _count(nnx.eval_shape(lambda: make_model(name, classes=100, norm=norm).__class__(
      int(name[3:]), 100, norm=norm, rngs=nnx.Rngs(0), head="light")))
  assert light == count - (512 * 4096 + 4096) - (4096 * 4096 + 4096) - (4096 * 100 + 100) + (
      512 * 100 + 100)


def _within(values, variance, what):
  """Sample variance of `values` (mean taken as 0, as drawn) against `variance`, 5 SE."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  estimate = float(np.mean(values**2))
  se = variance * np.sqrt(2.0 / values.size)
  assert abs(estimate - variance) < 5 * se, (what, estimate, variance)


@pytest.mark.parametrize("norm,conv_sw2", [("none", 2.8), ("last_bn", 2.8), ("weight_mean", 2.8),
                                           ("mimic", 2.8), ("batch_norm", 2.0)])
def test_vgg_initialisation_follows_the_official_rule(norm, conv_sw2):
  """vgg_nobn.py: every Conv2d N(0, 2.8/n) with n = k·k·in_channels, the stem included;
  vgg.py (BN): N(0, 2/n). Linear N(0, 2/n) with n = in_features, never centred; biases 0.
  Weight mean (main.py's `meanweigh`) centres each output channel's k·k·in weights of the
  convs with n > 50 (so not the 27-input stem): variance 2.8/n · (1 - 1/n)."""
  model = make_model("vgg16", classes=100, norm=norm, seed=3)
  for i, conv in enumerate(model.convs):
    kernel = np.asarray(conv.kernel[...])
    n = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    centred = norm in ("weight_mean", "mimic") and n > 50
    assert isinstance(conv.kernel, CentredKernel) == centred, i
    if centred:
      np.testing.assert_allclose(kernel.reshape(n, -1).mean(axis=0), 0.0, atol=1e-6)
    _within(kernel, conv_sw2 / n * ((1 - 1 / n) if centred else 1.0), f"conv {i}")
    assert not np.any(np.asarray(conv.bias[...]))
  for j, layer in enumerate(list(model.hidden) + [model.classifier]):
    kernel = np.asarray(layer.kernel[...])
    assert not isinstance(layer.kernel, CentredKernel), j
    _within(kernel, 2.0 / kernel.shape[0], f"linear {j}")
    assert not np.any(np.asarray(layer.bias[...]))
  assert (model.last_bn is not None) == (norm in ("last_bn", "mimic"))


def test_the_init_check_can_fail():
  """He's 2/n where the official rule says 2.8/n is caught (a 40% difference)."""
  rng = np.random.default_rng(0)
  with pytest.raises(AssertionError):
    _within(rng.normal(size=(3, 3, 64, 64)) * np.sqrt(2.0 / 576), 2.8 / 576, "planted")


def test_vgg_dropout_trains_and_evaluates_deterministically():
  model = make_model("vgg11", classes=10, norm="mimic", width=0.125)
  x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jax.numpy.float32)
  model.train()
  assert not np.allclose(model(x), model(x))  # a new dropout mask per call
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))


# squeezenet_nobn.py / squeezenet.py: (in, out, squeeze) of fires 2-9
OFFICIAL_FIRES = [(96, 128, 16), (128, 128, 16), (128, 256, 32), (256, 256, 32), (256, 384, 48),
                  (384, 384, 48), (384, 512, 64), (512, 512, 64)]


def official_squeezenet_parameters(classes, batch_norm):
  bn = 2 if batch_norm else 0
  total = 27 * 96 + 96 + bn * 96  # stem
  for cin, out, squeeze in OFFICIAL_FIRES:
    half = out // 2
    total += cin * squeeze + squeeze + squeeze * half + half + 9 * squeeze * half + half
    total += bn * (squeeze + 2 * half)
  return total + 512 * classes + classes  # conv10, no BN after it


@pytest.mark.parametrize("norm", ["batch_norm", "mimic", "none"])
def test_squeezenet_is_the_official_network(norm):
  from mimictheory._src import models
  model = make_model("squeezenet", classes=100, norm=norm, seed=1)
  assert _count(model) == official_squeezenet_parameters(100, norm == "batch_norm")
  shapes = []
  token = models._RECORDING.set(shapes)
  try:
    model.eval()
    model(jax.numpy.zeros((2, 32, 32, 3)))
  finally:
    models._RECORDING.reset(token)
  sizes = [s.shape[1] for s in shapes]
  # stem at 32, pool; fires 2-4 at 16, pool; fires 5-8 at 8, pool; fire 9 and conv10 at 4
  assert sizes == [32] + [16] * 9 + [8] * 12 + [4] * 3 + [4]
  centred = norm == "mimic"
  convs = [model.stem] + [c for f in model.fires for c in (f.squeeze, f.e1, f.e3)] + [
      model.conv10]
  for i, conv in enumerate(convs):
    kernel = np.asarray(conv.kernel[...])
    k, cin = kernel.shape[0], kernel.shape[2]
    n = k * k * cin
    variance = 2.0 / n if norm == "batch_norm" else 2.8 / (k * k * max(4, cin))
    is_centred = centred and n > 50
    assert isinstance(conv.kernel, CentredKernel) == is_centred, i
    _within(kernel, variance * ((1 - 1 / n) if is_centred else 1.0), f"conv {i}")


def official_shufflenet_parameters(classes, batch_norm):
  """shufflenetv2_nobn.py (batch_norm False) / shufflenetv2.py: ratio 1, out channels 116, 232,
  464, 1024; a stride-2 unit then 3, 7, 3 stride-1 units. Without BN every MyScaleLayer is one
  parameter and every unit has a scalar scale and bias; with BN, BatchNorm2d has 2 per channel."""
  bn = (lambda c: 2 * c) if batch_norm else (lambda c: 0)  # noqa: E731
  scalar = 0 if batch_norm else 1
  conv = lambda cin, cout, k, groups=1: k * k * (cin // groups) * cout + cout  # noqa: E731
  total = conv(3, 24, 3) + bn(24)
  cin = 24
  for cout, repeat in ((116, 3), (232, 7), (464, 3)):
    half = cout // 2
    total += (conv(cin, cin, 1) + bn(cin) + conv(cin, cin, 3, cin) + bn(cin)
              + conv(cin, half, 1) + bn(half) + scalar)  # branch, its 1.2² scale
    total += conv(cin, cin, 3, cin) + bn(cin) + conv(cin, half, 1) + bn(half) + scalar
    total += 2 * scalar  # the unit's scale and bias
    for _ in range(repeat):
      total += (conv(half, half, 1) + bn(half) + conv(half, half, 3, half) + bn(half)
                + conv(half, half, 1) + bn(half) + scalar + 2 * scalar)
    cin = cout
  total += conv(464, 1024, 1) + bn(1024) + scalar
  return total + 1024 * classes + classes


@pytest.mark.parametrize("norm", ["batch_norm", "mimic", "none"])
def test_shufflenetv2_is_the_official_network(norm):
  model = make_model("shufflenetv2", classes=100, norm=norm, seed=2)
  assert _count(model) == official_shufflenet_parameters(100, norm == "batch_norm")
  bn = norm == "batch_norm"
  convs = [model.stem, model.conv5] + [c for u in model.units for c in (
      (u.pw1, u.dw, u.pw2) + ((u.proj_dw, u.proj_pw) if u.stride == 2 else ()))]
  for i, conv in enumerate(convs):
    kernel = np.asarray(conv.kernel[...])
    k, per_group = kernel.shape[0], kernel.shape[2]
    variance = 2.0 / (k * k * max(4, per_group))  # He with n = k²·max(4, c_in/groups)
    n = k * k * per_group
    centred = norm == "mimic" and n > 50
    assert isinstance(conv.kernel, CentredKernel) == centred, i
    _within(kernel, variance * ((1 - 1 / n) if centred else 1.0), f"conv {i}")
  _within(model.classifier.kernel[...], 2.0 / 1024, "fc")
  if not bn:  # the official scalars: 1.2² on every branch, 1.2 on shortcuts and conv5
    assert all(float(u.scale.scale[...]) == pytest.approx(1.44) for u in model.units)
    assert all(float(u.proj_scale.scale[...]) == pytest.approx(1.2) for u in model.units
               if u.stride == 2)
    assert float(model.conv5_scale.scale[...]) == pytest.approx(1.2)
    assert all(float(u.out_scale[...]) == 1 and float(u.out_bias[...]) == 0
               for u in model.units)


def official_resnet_parameters(depth, classes, norm):
  """resnet_nobn.py (none, last BN, weight mean, MimicNorm: conv biases, except the bottleneck
  shortcut; one scalar per block), resnet.py (BN: no conv biases, BatchNorm2d 2 per channel
  after every conv) and resnet_fixup.py (no conv biases; per block a scale and 2 scalar biases
  per conv; 2 more around the stem and the classifier)."""
  bottleneck = depth == 50
  counts = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
  bn, fixup = norm == "batch_norm", norm == "fixup"
  bias = 0 if (bn or fixup) else 1
  conv = lambda cin, cout, k, with_bias=True: (  # noqa: E731
      k * k * cin * cout + (cout * bias if with_bias else 0) + (2 * cout if bn else 0))
  total, cin = conv(3, 64, 3), 64
  for stage, count in enumerate(counts):
    planes = 64 * 2**stage
    cout = planes * (4 if bottleneck else 1)
    for i in range(count):
      stride = 2 if stage > 0 and i == 0 else 1
      if bottleneck:
        total += conv(cin, planes, 1) + conv(planes, planes, 3) + conv(planes, cout, 1)
        convs = 3
      else:
        total += conv(cin, planes, 3) + conv(planes, planes, 3)
        convs = 2
      if stride != 1 or cin != cout:
        total += conv(cin, cout, 1, with_bias=not bottleneck)
      total += 0 if bn else 1  # the block's scalar (Fixup's multiplier)
      total += 2 * convs if fixup else 0
      cin = cout
  return total + (2 if fixup else 0) + cin * classes + classes


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("norm", ["batch_norm", "mimic", "fixup"])
def test_resnet_parameter_count_is_the_official_one(depth, norm):
  model = nnx.eval_shape(lambda: make_model(f"resnet{depth}", classes=100, norm=norm))
  assert _count(model) == official_resnet_parameters(depth, 100, norm)


def _uniform_within(values, bound, what):
  """U(±bound): every value inside, variance bound²/3 within 5 SE (a uniform's fourth moment
  is 9/5 of its squared variance)."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  assert np.abs(values).max() <= bound * (1 + 1e-6), what
  variance = bound**2 / 3
  se = np.sqrt((9 / 5 - 1) * variance**2 / values.size)
  assert abs(float(np.mean(values**2)) - variance) < 5 * se, what


def _resnet_convs(model):
  for b, block in enumerate(model.blocks):
    for i, conv in enumerate(block.convs):
      yield f"block {b} conv {i}", conv, i == len(block.convs) - 1
    if block.shortcut is not None:
      yield f"block {b} shortcut", block.shortcut, None


@pytest.mark.parametrize("norm", ["none", "mimic", "batch_norm", "fixup"])
def test_resnet_initialisation_follows_the_official_rule(norm):
  """resnet_nobn.py: every Conv2d (stem, branch, shortcut) and the Linear N(0, 2/n) with zero
  biases, n the fan-in; weight mean centres the convs with n > 50, never the Linear.
  resnet.py (BN): PyTorch's defaults, U(±1/√n) for the weights (and the Linear's bias), no
  conv biases. resnet_fixup.py: the stem PyTorch's default; a branch's convs N(0, 2/(k²·c_out))
  (fan-out) times L^(-1) (basic block, L = 8 for ResNet18), its last conv 0, the shortcut
  N(0, 2/c_out), the Linear 0."""
  model = make_model("resnet18", classes=100, norm=norm, seed=4)
  stem = np.asarray(model.stem.kernel[...])
  if norm in ("batch_norm", "fixup"):
    _uniform_within(stem, 1 / np.sqrt(27), "stem")
    assert model.stem.bias is None
  else:
    _within(stem, 2.0 / 27, "stem")
  for what, conv, last in _resnet_convs(model):
    kernel = np.asarray(conv.kernel[...])
    k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    n = k * k * cin
    if norm == "batch_norm":
      _uniform_within(kernel, 1 / np.sqrt(n), what)
      assert conv.bias is None
    elif norm == "fixup":
      assert conv.bias is None
      if last:
        assert not np.any(kernel), what
      else:
        _within(kernel, 2.0 / (k * k * cout) / (8 if last is False else 1), what)
    else:
      centred = norm == "mimic" and n > 50
      assert isinstance(conv.kernel, CentredKernel) == centred, what
      _within(kernel, 2.0 / n * ((1 - 1 / n) if centred else 1.0), what)
      assert not np.any(np.asarray(conv.bias[...]))
  fc = np.asarray(model.classifier.kernel[...])
  assert not isinstance(model.classifier.kernel, CentredKernel)
  if norm == "batch_norm":
    _uniform_within(fc, 1 / np.sqrt(512), "fc")
    _uniform_within(model.classifier.bias[...], 1 / np.sqrt(512), "fc bias")
  elif norm == "fixup":
    assert not np.any(fc) and not np.any(np.asarray(model.classifier.bias[...]))
  else:
    _within(fc, 2.0 / 512, "fc")
  if norm in ("none", "mimic"):  # the official residual scalars: 1.2²/l
    assert [float(b.scale.scale[...]) for b in model.blocks] == pytest.approx(
        [1.44 / l for l in range(1, 9)])


@pytest.mark.parametrize("name,norm", [("resnet50", "mimic"), ("resnet18", "fixup"),
                                       ("shufflenetv2", "mimic")])
def test_stored_scalars_are_the_same_function_as_folded_ones(name, norm):
  """`fold_scalars=False` multiplies the activation as the official code does; the network is
  the same function (to float32 rounding), in training mode too, and has the same parameters."""
  x = jax.numpy.asarray(np.random.default_rng(5).normal(size=(4, 32, 32, 3)), jax.numpy.float32)
  folded = make_model(name, classes=10, norm=norm, width=0.25, seed=6)
  stored = make_model(name, classes=10, norm=norm, width=0.25, seed=6, fold_scalars=False)
  if norm == "fixup":  # move Fixup off its zeros (last convs, classifier, scalars)
    for model in (folded, stored):
      nnx.update(model, jax.tree.map(lambda a: a + 0.01 * (1 + np.arange(a.size).reshape(a.shape)
                                                           % 3), nnx.state(model, nnx.Param)))
  for model in (folded, stored):
    model.train()
  a, b = folded(x), stored(x)
  assert float(jax.numpy.abs(a).max()) > 0.1
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jax.numpy.abs(a).max()))
  assert _count(folded) == _count(stored)
  with pytest.raises(TypeError, match="fold_scalars"):
    make_model(name, classes=10, norm=norm, width=0.25, fold_scalars="no")


def test_depths_outside_the_papers_are_refused_by_name():
  """The docstrings promise VGG-11/16 and ResNet-18/50; other depths raised KeyError."""
  from mimictheory._src.models import VGG, ResNet
  with pytest.raises(ValueError, match=r"depth must be one of \(11, 16\)"):
    VGG(13, norm="mimic", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"depth must be one of \(18, 50\)"):
    ResNet(34, norm="mimic", rngs=nnx.Rngs(0))
