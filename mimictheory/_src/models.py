"""CIFAR models with a `norm` switch: VGG11/16, ResNet18/50, ShuffleNetV2 and SqueezeNet.

`norm` = "batch_norm" (BatchNorm after every conv, the baseline; "bn" also reads), "none",
"weight_mean", "last_bn" or "mimic" (weight mean + last BN, the paper's MimicNorm). VGG,
SqueezeNet, ShuffleNetV2 and ResNet are the official code's networks (architecture,
initialisation per norm, scalars and classifier; see each class). Without BN every ResNet
branch ends in a learnable `ResidualScalar` initialised at the official code's 1.2^k / l (k
convs in the branch, l the block index), and its convs start at He's scale, the 1.2 per conv
being folded into the scalar as in the official code. By default a scalar multiplies the
branch's last conv (kernel and bias), which saves memory; `fold_scalars=False` multiplies the
activation as the official code does. Where that conv is followed by a ReLU (ShuffleNetV2) the
two are equal while the scalar stays positive.
The residual models also take the normalisation-free baselines the paper compares with:
`norm="fixup"` (Zhang et al. 2019: the last conv of every branch and the classifier start at
zero, the other branch convs at He's scale times L^(-1/(2m-2)) for L branches of m convs, a
scalar multiplier (1) per branch and scalar biases (0) before every conv, activation and the
classifier) and `norm="skipinit"` (De & Smith 2020: He's scale, every branch times a learnable
scalar that starts at 0). At initialisation both make every residual block the identity.
Inputs are NHWC.
"""
from __future__ import annotations

import contextvars
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mimictheory._src import checks
from mimictheory._src.norms import check_norm
from mimictheory._src.signals import Signal, pair_statistics, unit_statistics
from mimictheory._src.nn import (
    MIN_FAN_IN, NORM_OPTIONS, RESIDUAL_BASELINES, CentredKernel, Dense, LastBatchNorm,
    ResidualScalar, centre_kernel, init_sw2, pytorch_init)

__all__ = ["Conv", "VGG", "ResNet", "ShuffleNetV2", "SqueezeNet", "MODELS", "make_model",
           "signals"]

_RECORDING: contextvars.ContextVar = contextvars.ContextVar("conv_outputs", default=None)


class Conv(nnx.Module):
  """A 2-D convolution (NHWC, SAME padding) whose kernel (kh, kw, in/groups, out) is a
  `CentredKernel` under weight mean when its per-channel fan-in kh·kw·in/groups ≥ `min_fan_in`
  (depthwise convs are skipped). Initialisation: N(0, σw²/fan-in) with bias 0, or with
  `pytorch_default` PyTorch's default for Conv2d (weights and bias U(±1/√fan-in), σw² = 1/3);
  `use_bias=False` drops the bias.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from mimictheory.nn import Conv
  >>> conv = Conv(3, 8, 3, weight_mean=True, rngs=nnx.Rngs(0))
  >>> conv(jnp.ones((1, 8, 8, 3))).shape
  (1, 8, 8, 8)
  """

  def __init__(self, cin: int, cout: int, size: int = 3, stride: int = 1, groups: int = 1, *,
               weight_mean: bool, rngs: nnx.Rngs, sw2: float | None = None,
               min_fan_in: int = MIN_FAN_IN, use_bias: bool = True,
               pytorch_default: bool = False, fold_scale: bool = True):
    fan_in = size * size * cin // groups
    covered = weight_mean and fan_in >= min_fan_in
    shape = (size, size, cin // groups, cout)
    if pytorch_default:
      kernel, bias = pytorch_init(rngs, shape, fan_in, use_bias)
    else:
      sw2 = init_sw2(fan_in, covered) if sw2 is None else sw2
      kernel = jax.random.normal(rngs.params(), shape) * math.sqrt(sw2 / fan_in)
      bias = jnp.zeros((cout,)) if use_bias else None
    self.kernel = CentredKernel(centre_kernel(kernel)) if covered else nnx.Param(kernel)
    self.bias = None if bias is None else nnx.Param(bias)
    self.stride, self.groups, self.fold_scale = stride, groups, fold_scale

  def __call__(self, x, scale=None):
    """conv(x), times `scale` (a residual scalar) if given. With `fold_scale` (the default) the
    scale multiplies the kernel and bias instead: the same function, but no extra activation
    is kept for the backward pass (the gradient of the scale is ⟨W, ∂L/∂(scale·W)⟩ +
    ⟨b, ∂L/∂(scale·b)⟩, which needs only x, already kept for the kernel's own gradient).
    `fold_scale=False` multiplies the output, as the official PyTorch code does, which stores
    the product (`memory` measures both)."""
    kernel = self.kernel[...]
    bias = None if self.bias is None else self.bias[...]
    if scale is not None and self.fold_scale:
      kernel = scale * kernel
      bias = None if bias is None else scale * bias
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if bias is not None:
      y = y + bias
    if scale is not None and not self.fold_scale:
      y = y * scale
    recording = _RECORDING.get()
    if recording is not None:  # `signals` is listening (eager calls only)
      recording.append(y)
    return y


class _Net(nnx.Module):
  """Shared pieces: the norm switch, conv(+BN) units, the classifier and the last BN."""

  def _setup(self, norm: str, rngs: nnx.Rngs, residual_init="official",
              baselines: tuple = (), fold_scalars: bool = True):
    norm = check_norm(norm, NORM_OPTIONS + baselines)
    if not (residual_init == "official" or callable(residual_init)):
      checks.check_nonnegative("residual_init", residual_init)
    if not isinstance(fold_scalars, bool):
      raise TypeError(f"fold_scalars must be True or False, got {fold_scalars!r}")
    self.residual_init = residual_init
    self.fold_scalars = fold_scalars
    self.norm = norm
    self.weight_mean = norm in ("weight_mean", "mimic")
    self.rngs = rngs

  def conv(self, cin, cout, size=3, stride=1, groups=1, sw2=None, use_bias=True,
           pytorch_default=False):
    return Conv(cin, cout, size, stride, groups, weight_mean=self.weight_mean, rngs=self.rngs,
                sw2=sw2, use_bias=use_bias, pytorch_default=pytorch_default,
                fold_scale=self.fold_scalars)

  def bn(self, channels):
    if self.norm != "batch_norm":
      return None
    return nnx.BatchNorm(channels, momentum=0.9, rngs=self.rngs)

  def head(self, features, classes, pytorch_default=False):
    """The classifier as the official code initialises it: a Linear never centred by weight
    mean (`main.py` leaves Linear layers alone), N(0, 2/n) and bias 0, or PyTorch's default
    (`pytorch_default`, the BN ResNet), or zero (Fixup); then the last BN if the norm has it."""
    fixup = self.norm == "fixup"
    self.classifier = Dense(features, classes, weight_mean=False, rngs=self.rngs,
                            sw2=0.0 if fixup else 2.0, pytorch_default=pytorch_default)
    self.classifier_bias = nnx.Param(jnp.zeros(())) if fixup else None  # Fixup's scalar bias
    self.finish(classes)

  def finish(self, classes):
    """The last BN on the logits if the norm has it; construction is over (it comes last)."""
    self.last_bn = (LastBatchNorm(classes, rngs=self.rngs)
                    if self.norm in ("last_bn", "mimic") else None)
    del self.rngs, self.residual_init

  def scalar(self, block, convs):
    """The residual scalar of block `block` (from 1) with `convs` convs: `residual_init` is
    "official" (1.2^k / l), a constant, or a callable (block, convs) -> initial value."""
    if self.norm == "batch_norm":
      return None
    if self.norm in RESIDUAL_BASELINES:  # Fixup's multiplier starts at 1, SkipInit's at 0
      return ResidualScalar(1.0 if self.norm == "fixup" else 0.0)
    init = self.residual_init
    value = (ResidualScalar.official(block, convs) if init == "official" else
             init(block, convs) if callable(init) else float(init))
    return ResidualScalar(value)

  def branch_sw2(self, shapes, branches: int):
    """σw² (on the fan-in) of each conv (c_in, c_out, k, stride) of a residual branch, as the
    official code: He's 2 without BN (the official 1.2 per conv lives in the scalar; weight
    mean centres the He draw, `main.py`'s `meanweigh`); Fixup (`resnet_fixup.py`): He's
    variance on the fan-out, 2/(k²·c_out), times L^(-1/(m-1)) for L branches of m convs, i.e.
    σw² = 2·(c_in/c_out)·L^(-1/(m-1)), and 0 for the branch's last conv. (With BN the convs
    keep PyTorch's default, see `ResNet`.)"""
    if self.norm == "fixup":
      m = len(shapes)
      return [2.0 * cin / cout * branches ** (-1.0 / (m - 1)) for cin, cout, _, _ in shapes[:-1]
              ] + [0.0]
    return [2.0] * len(shapes)

  def classify(self, x):
    features = jnp.mean(x, axis=(1, 2))
    if self.classifier_bias is not None:
      features = features + self.classifier_bias[...]
    logits = self.classifier(features)
    return logits if self.last_bn is None else self.last_bn(logits)


def _apply(bn, x):
  return x if bn is None else bn(x)


# ----------------------------------------------------------------------------------------------
# VGG.
# ----------------------------------------------------------------------------------------------
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


#: The official VGG's conv initialisation without BN (`vgg_nobn.py`): N(0, 2.8/n) for every
#: conv, the stem included, whatever the norm (none, last BN, weight mean, MimicNorm); with BN,
#: He's N(0, 2/n) (`vgg.py`). Its Linear layers are N(0, 2/n) and never centred.
VGG_CONV_SW2 = 2.8
VGG_HIDDEN = 4096  # the classifier's hidden width at width 1


class VGG(_Net):
  """VGG-11/16 for 32×32 images as the paper's official code builds it, with `norm` one of
  `NORM_OPTIONS`: BN after every conv, MimicNorm (weight-mean convs + last BN), or none.

  The features (3×3 convs, ReLU, five 2×2 max pools: 1×1×512 for a 32×32 image) feed the
  official classifier, `head="paper"`: 512 → 4096 → 4096 → classes, ReLU and Dropout(0.5)
  after each hidden Linear, then the last BN for last_bn and MimicNorm (34.0M parameters for
  VGG16 on CIFAR-100). `width` scales every channel count and the hidden width. Initialisation
  as the official code: convs N(0, 2.8/n) without BN, N(0, 2/n) with BN (`VGG_CONV_SW2`);
  Linear N(0, 2/n), not centred by weight mean; biases 0. `head="light"` (global average
  pooling and one Linear, 14.8M for VGG16) is the lighter classifier of earlier versions.

  >>> import jax
  >>> from flax import nnx
  >>> from mimictheory.nn import make_model
  >>> net = make_model("vgg11", classes=10, norm="mimic", width=0.125)
  >>> net.eval()   # running statistics: the abstract call below mutates nothing
  >>> type(net).__name__, nnx.eval_shape(lambda: net(jax.numpy.zeros((2, 32, 32, 3)))).shape
  ('VGG', (2, 10))
  """

  def __init__(self, depth: int = 11, classes: int = 100, *, norm: str = "mimic",
               rngs: nnx.Rngs, width: float = 1.0, head: str = "paper"):
    if depth not in VGG_CONFIGS:
      raise ValueError(f"depth must be one of {tuple(VGG_CONFIGS)} for VGG, got {depth!r}")
    self._setup(norm, rngs)
    checks.check_choice("head", head, ("paper", "light"))
    sw2 = None if self.norm == "batch_norm" else VGG_CONV_SW2
    convs, bns, pools, cin = [], [], [], 3
    for item in VGG_CONFIGS[depth]:
      if item == "M":
        pools.append(len(convs) - 1)  # pool after the conv just added
        continue
      cout = max(1, int(item * width))
      convs.append(self.conv(cin, cout, sw2=sw2 if sw2 is not None else 2.0))
      bns.append(self.bn(cout))
      cin = cout
    self.convs = nnx.List(convs)
    self.bns = nnx.List(bns) if self.norm == "batch_norm" else None
    self.pool_after = tuple(pools)
    if head == "paper":  # two hidden Linear layers as the official classifier's (never centred)
      hidden = max(1, int(VGG_HIDDEN * width))
      dense = lambda a, b: Dense(a, b, weight_mean=False, rngs=self.rngs, sw2=2.0)  # noqa: E731
      self.hidden = nnx.List([dense(cin, hidden), dense(hidden, hidden)])
      self.dropout = nnx.Dropout(0.5, rngs=self.rngs)
      cin = hidden
    else:
      self.hidden = None
    self.head(cin, classes)

  def __call__(self, x):
    for i, conv in enumerate(self.convs):
      x = jax.nn.relu(_apply(None if self.bns is None else self.bns[i], conv(x)))
      if i in self.pool_after:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    if self.hidden is None:
      return self.classify(x)
    x = x.reshape(x.shape[0], -1)  # 1×1×C after the fifth pool: the official view(N, -1)
    for layer in self.hidden:
      x = self.dropout(jax.nn.relu(layer(x)))
    logits = self.classifier(x)
    return logits if self.last_bn is None else self.last_bn(logits)


# ----------------------------------------------------------------------------------------------
# ResNet (CIFAR stem: one 3x3 conv, no max pool).
# ----------------------------------------------------------------------------------------------
class _Block(nnx.Module):
  def __init__(self, net: _Net, cin, cout, stride, block_index, bottleneck: bool, branches: int):
    mid = cout // 4 if bottleneck else cout
    if bottleneck:
      shapes = [(cin, mid, 1, 1), (mid, mid, 3, stride), (mid, cout, 1, 1)]
    else:
      shapes = [(cin, mid, 3, stride), (mid, cout, 3, 1)]
    bn, fixup = net.norm == "batch_norm", net.norm == "fixup"
    sw2 = net.branch_sw2(shapes, branches)
    # biases: the BN and Fixup ResNets' convs have none; resnet_nobn.py's have one, except
    # the bottleneck's shortcut
    self.convs = nnx.List([net.conv(a, b, size, s, sw2=w, use_bias=not (bn or fixup),
                                    pytorch_default=bn)
                           for (a, b, size, s), w in zip(shapes, sw2)])
    self.bns = nnx.List([net.bn(b) for _, b, _, _ in shapes]) if net.norm == "batch_norm" else None
    self.scale = net.scalar(block_index, len(shapes))
    # Fixup's scalar biases: before every conv, and after every conv (before its activation;
    # after the multiplier for the last).
    self.biases = (nnx.List([nnx.Param(jnp.zeros(())) for _ in range(2 * len(shapes))])
                   if net.norm == "fixup" else None)
    needs_proj = stride != 1 or cin != cout
    # the shortcut conv: He's 2 on the fan-in without BN, He on the fan-out for Fixup
    self.shortcut = net.conv(
        cin, cout, 1, stride, sw2=2.0 * cin / cout if fixup else 2.0,
        use_bias=not (bn or fixup or bottleneck), pytorch_default=bn) if needs_proj else None
    self.shortcut_bn = net.bn(cout) if needs_proj else None

  def _bias(self, i):
    return 0.0 if self.biases is None else self.biases[i][...]

  def __call__(self, x):
    h = x
    last = len(self.convs) - 1
    for i, conv in enumerate(self.convs):
      h = conv(h + self._bias(2 * i),
               self.scale.scale[...] if i == last and self.scale is not None else None)
      h = h + self._bias(2 * i + 1)
      if self.bns is not None:
        h = self.bns[i](h)
      if i < last:
        h = jax.nn.relu(h)
    skip = x if self.shortcut is None else _apply(self.shortcut_bn,
                                                  self.shortcut(x + self._bias(0)))
    return jax.nn.relu(h + skip)


RESNET_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}  # blocks per stage: basic / bottleneck


class ResNet(_Net):
  """ResNet-18/50 for 32×32 images as the paper's official code builds it, with `norm` one of
  `NORM_OPTIONS` or, for the baselines, `RESIDUAL_BASELINES` (Fixup, SkipInit): a 3×3 stem of
  64 channels (no max pool), stages of basic blocks (18) or bottlenecks (50), global average
  pooling and a Linear classifier (then the last BN for last_bn and MimicNorm).

  Initialisation per norm, as the official code: without BN (`resnet_nobn.py`) every conv and
  the Linear N(0, 2/n) with zero biases (weight mean centres the convs with more than 50
  inputs per output; Linear layers are never centred) and every branch times a learnable
  residual scalar initialised by `residual_init` ("official": 1.2^k/l for k convs in block
  l); with BN (`resnet.py`) PyTorch's defaults (`pytorch_init`) and no conv biases; Fixup as
  `resnet_fixup.py` (see `_Net.branch_sw2`; the stem keeps PyTorch's default; no conv
  biases). `fold_scalars=False` multiplies each branch's output by its scalar, as the
  official code does, instead of folding the scalar into the last conv (the same function;
  it stores one more activation per block, which `memory` measures).

  >>> import jax
  >>> from flax import nnx
  >>> from mimictheory.nn import make_model
  >>> net = make_model("resnet18", classes=10, norm="mimic", width=0.125)
  >>> net.eval()   # running statistics: the abstract call below mutates nothing
  >>> type(net).__name__, nnx.eval_shape(lambda: net(jax.numpy.zeros((2, 32, 32, 3)))).shape
  ('ResNet', (2, 10))
  """

  def __init__(self, depth: int = 18, classes: int = 100, *, norm: str = "mimic",
               rngs: nnx.Rngs, width: float = 1.0, residual_init="official",
               fold_scalars: bool = True):
    self._setup(norm, rngs, residual_init, baselines=RESIDUAL_BASELINES,
                fold_scalars=fold_scalars)
    if depth not in RESNET_BLOCKS:
      raise ValueError(f"depth must be one of {tuple(RESNET_BLOCKS)} for ResNet, got {depth!r}")
    bottleneck = depth == 50
    counts = RESNET_BLOCKS[depth]
    base = max(1, int(64 * width))
    pytorch = self.norm in ("batch_norm", "fixup")
    self.stem = self.conv(3, base, sw2=2.0, use_bias=not pytorch, pytorch_default=pytorch)
    self.stem_bn = self.bn(base)
    self.stem_bias = nnx.Param(jnp.zeros(())) if norm == "fixup" else None
    blocks, cin, index = [], base, 1
    for stage, count in enumerate(counts):
      cout = base * 2**stage * (4 if bottleneck else 1)
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(_Block(self, cin, cout, stride, index, bottleneck, sum(counts)))
        cin, index = cout, index + 1
    self.blocks = nnx.List(blocks)
    self.head(cin, classes, pytorch_default=self.norm == "batch_norm")

  def __call__(self, x):
    x = _apply(self.stem_bn, self.stem(x))
    x = jax.nn.relu(x if self.stem_bias is None else x + self.stem_bias[...])
    for block in self.blocks:
      x = block(x)
    return self.classify(x)


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2 (1x) and SqueezeNet (1.1) for 32x32 inputs.
# ----------------------------------------------------------------------------------------------
def _shuffle(x, groups=2):
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)


#: ShuffleNetV2's official scalars without BN (`shufflenetv2_nobn.py`): every branch's last
#: conv times a learnable 1.2² (no 1/l: with concatenation no variance builds up along the
#: identity path), the stride-2 shortcut's and conv5's times a learnable 1.2.
SHUFFLE_BRANCH_SCALE, SHUFFLE_SCALE = 1.2**2, 1.2


class _ShuffleUnit(nnx.Module):
  """The official unit. Stride 1: the channels split in halves; one half passes, the other
  goes through 1×1 (ReLU), 3×3 depthwise, 1×1 (ReLU). Stride 2: both branches see the whole
  input; the branch's 1×1 convs keep c_in channels until the last (c_out/2), the shortcut is a
  3×3 depthwise and a 1×1 (ReLU). Without BN the branch's last conv is scaled by a learnable
  1.2² (`residual_init` "official"; a constant or callable replaces it), the shortcut's by a
  learnable 1.2, and the branch output then by a learnable scale (1) plus a learnable bias (0)."""

  def __init__(self, net: _Net, cin, cout, stride, block_index, sw2):
    self.stride = stride
    branch_in = cin if stride == 2 else cin // 2
    mid = branch_in
    bn = net.norm == "batch_norm"
    self.pw1 = net.conv(branch_in, mid, 1, sw2=sw2(branch_in, 1))
    self.dw = net.conv(mid, mid, 3, stride, groups=mid, sw2=sw2(mid, mid))  # skipped by WM
    self.pw2 = net.conv(mid, cout // 2, 1, sw2=sw2(mid, 1))
    self.bns = nnx.List([net.bn(mid), net.bn(mid), net.bn(cout // 2)]) if bn else None
    if bn:
      self.scale = self.out_scale = self.out_bias = None
    else:
      init = net.residual_init
      value = (SHUFFLE_BRANCH_SCALE if init == "official" else
               init(block_index, 3) if callable(init) else float(init))
      self.scale = ResidualScalar(value)
      self.out_scale = nnx.Param(jnp.ones(()))
      self.out_bias = nnx.Param(jnp.zeros(()))
    if stride == 2:
      self.proj_dw = net.conv(cin, cin, 3, 2, groups=cin, sw2=sw2(cin, cin))
      self.proj_pw = net.conv(cin, cout // 2, 1, sw2=sw2(cin, 1))
      self.proj_bns = nnx.List([net.bn(cin), net.bn(cout // 2)]) if bn else None
      self.proj_scale = None if bn else ResidualScalar(SHUFFLE_SCALE)

  def _branch(self, x):
    h = x
    for i, conv in enumerate((self.pw1, self.dw, self.pw2)):
      h = conv(h, self.scale.scale[...] if i == 2 and self.scale is not None else None)
      if self.bns is not None:
        h = self.bns[i](h)
      if i != 1:
        h = jax.nn.relu(h)
    if self.out_scale is not None:
      h = h * self.out_scale[...] + self.out_bias[...]
    return h

  def __call__(self, x):
    if self.stride == 1:
      left, right = jnp.split(x, 2, axis=-1)
      return _shuffle(jnp.concatenate([left, self._branch(right)], axis=-1))
    left = self.proj_dw(x)
    if self.proj_bns is not None:
      left = self.proj_bns[0](left)
    left = self.proj_pw(left, None if self.proj_scale is None else self.proj_scale.scale[...])
    if self.proj_bns is not None:
      left = self.proj_bns[1](left)
    return _shuffle(jnp.concatenate([jax.nn.relu(left), self._branch(x)], axis=-1))


class ShuffleNetV2(_Net):
  """ShuffleNetV2 (1×) for 32×32 images as the paper's official code builds it, with `norm` one
  of `NORM_OPTIONS`: a 3×3 stem of 24 channels (no ReLU), stages of 4, 8 and 4 units
  (`_ShuffleUnit`) to 116, 232 and 464 channels, a 1×1 conv5 to 1024 (ReLU; without BN scaled
  by a learnable 1.2), global average pooling, a Linear classifier (then the last BN for
  last_bn and MimicNorm). Initialisation as the official code: He's N(0, 2/(k²·max(4,
  c_in/groups))) for every conv (a depthwise 3×3: 2/36), Linear N(0, 2/n); weight mean
  centres the convs with more than 50 inputs per output channel. `fold_scalars=False`
  multiplies the activations by the 1.44 and 1.2 scalars, as the official code does, instead
  of folding them into the convs (the same function, more stored activations).

  >>> import jax
  >>> from flax import nnx
  >>> from mimictheory.nn import make_model
  >>> net = make_model("shufflenetv2", classes=10, norm="mimic", width=0.125)
  >>> net.eval()   # running statistics: the abstract call below mutates nothing
  >>> type(net).__name__, nnx.eval_shape(lambda: net(jax.numpy.zeros((2, 32, 32, 3)))).shape
  ('ShuffleNetV2', (2, 10))
  """

  def __init__(self, classes: int = 100, *, norm: str = "mimic", rngs: nnx.Rngs,
               width: float = 1.0, residual_init="official", fold_scalars: bool = True):
    self._setup(norm, rngs, residual_init, fold_scalars=fold_scalars)
    sw2 = lambda cin, groups: official_sw2(cin, groups, gain=2.0)  # noqa: E731
    channels = [max(2, 2 * int(c * width / 2)) for c in (24, 116, 232, 464)]
    self.stem = self.conv(3, channels[0], sw2=sw2(3, 1))
    self.stem_bn = self.bn(channels[0])
    units, cin, index = [], channels[0], 1
    for cout, repeat in zip(channels[1:], (4, 8, 4)):
      for i in range(repeat):
        units.append(_ShuffleUnit(self, cin, cout, 2 if i == 0 else 1, index, sw2))
        cin, index = cout, index + 1
    self.units = nnx.List(units)
    last = max(2, int(1024 * width))
    self.conv5 = self.conv(cin, last, 1, sw2=sw2(cin, 1))
    self.conv5_bn = self.bn(last)
    self.conv5_scale = None if self.norm == "batch_norm" else ResidualScalar(SHUFFLE_SCALE)
    self.head(last, classes)

  def __call__(self, x):
    x = _apply(self.stem_bn, self.stem(x))  # the official stem has no ReLU
    for unit in self.units:
      x = unit(x)
    scale = None if self.conv5_scale is None else self.conv5_scale.scale[...]
    return self.classify(jax.nn.relu(_apply(self.conv5_bn, self.conv5(x, scale))))


def official_sw2(cin: int, groups: int = 1, gain: float = 2.8) -> float:
  """σw² (on this library's fan-in k·k·cin/groups) of the official code's rule
  N(0, gain/(k·k·max(4, cin/groups))) for SqueezeNet and ShuffleNetV2: `gain` below 4 inputs
  per group, gain·(cin/groups)/4 below (the stem's 3 channels; depthwise convs)."""
  per_group = cin / groups
  return gain * per_group / max(4.0, per_group)


class _Fire(nnx.Module):
  def __init__(self, net: _Net, cin, squeeze, expand, sw2):
    """`sw2(c_in)`: each conv's initial σw² from its input channels."""
    self.squeeze = net.conv(cin, squeeze, 1, sw2=sw2(cin))
    self.e1 = net.conv(squeeze, expand, 1, sw2=sw2(squeeze))
    self.e3 = net.conv(squeeze, expand, 3, sw2=sw2(squeeze))
    self.bns = nnx.List([net.bn(squeeze), net.bn(expand), net.bn(expand)]) \
        if net.norm == "batch_norm" else None

  def __call__(self, x):
    bn = (lambda i, h: h) if self.bns is None else (lambda i, h: self.bns[i](h))  # noqa: E731
    s = jax.nn.relu(bn(0, self.squeeze(x)))
    return jnp.concatenate([jax.nn.relu(bn(1, self.e1(s))), jax.nn.relu(bn(2, self.e3(s)))], -1)


class SqueezeNet(_Net):
  """SqueezeNet for 32×32 images as the paper's official code builds it, with `norm` one of
  `NORM_OPTIONS`: a 3×3 stem of 96 channels and a 2×2 max pool, fires 2-9 of (squeeze,
  expand) (16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)
  (each expand a 1×1 and a 3×3 half), shortcut additions around fires 3, 5 and 7, max pools
  after fires 4 and 8, and a 1×1 conv10 to the classes, averaged over positions (then the last
  BN for last_bn and MimicNorm). Initialisation as the official code: N(0, 2.8/(k²·max(4,
  c_in))) without BN, He's N(0, 2/(k²·c_in)) with it; weight mean centres the convs with more
  than 50 inputs per output (conv10 included). `width` scales the channels.

  >>> import jax
  >>> from flax import nnx
  >>> from mimictheory.nn import make_model
  >>> net = make_model("squeezenet", classes=10, norm="mimic", width=0.125)
  >>> net.eval()   # running statistics: the abstract call below mutates nothing
  >>> type(net).__name__, nnx.eval_shape(lambda: net(jax.numpy.zeros((2, 32, 32, 3)))).shape
  ('SqueezeNet', (2, 10))
  """

  def __init__(self, classes: int = 100, *, norm: str = "mimic", rngs: nnx.Rngs,
               width: float = 1.0):
    self._setup(norm, rngs)
    w = lambda c: max(2, int(c * width))  # noqa: E731
    bn = self.norm == "batch_norm"
    sw2 = (lambda cin: 2.0) if bn else official_sw2  # noqa: E731
    self.stem = self.conv(3, w(96), sw2=sw2(3))
    self.stem_bn = self.bn(w(96))
    # (squeeze, expand half, shortcut addition, max pool after)
    spec = [(16, 64, False, False), (16, 64, True, False), (32, 128, False, True),
            (32, 128, True, False), (48, 192, False, False), (48, 192, True, False),
            (64, 256, False, True), (64, 256, False, False)]
    fires, cin = [], w(96)
    for squeeze, expand, _, _ in spec:
      fires.append(_Fire(self, cin, w(squeeze), w(expand), sw2))
      cin = 2 * w(expand)
    self.fires = nnx.List(fires)
    self.shortcut_at = tuple(i for i, s in enumerate(spec) if s[2])
    self.pool_after = tuple(i for i, s in enumerate(spec) if s[3])
    self.conv10 = self.conv(cin, classes, 1, sw2=sw2(cin))
    self.finish(classes)

  def __call__(self, x):
    x = jax.nn.relu(_apply(self.stem_bn, self.stem(x)))
    x = nnx.max_pool(x, (2, 2), (2, 2))
    for i, fire in enumerate(self.fires):
      x = fire(x) + x if i in self.shortcut_at else fire(x)
      if i in self.pool_after:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    logits = jnp.mean(self.conv10(x), axis=(1, 2))
    return logits if self.last_bn is None else self.last_bn(logits)


_MODE_ATTRIBUTES = ("deterministic", "use_running_average")


def _modes(model: nnx.Module):
  """(module, {attribute: value}) for the train/eval switches of every submodule."""
  return [(m, {a: getattr(m, a) for a in _MODE_ATTRIBUTES if hasattr(m, a)})
          for _, m in nnx.iter_modules(model)]


def signals(model: nnx.Module, x, batch_statistics: bool = False) -> Signal:
  """Signal-propagation metrics of every conv output of `model` on the batch x (NHWC), one row
  per conv in the order they run: a `Signal` (NFNets' SPPs) with channels as units, the same
  type and words as an MLP's `signals` and a finite network's: `mean` (L,) the average squared
  batch mean of a channel (over the batch and positions), `variance` (L,) its average batch
  variance, `q` (L, N) each input's mean squared activation, `correlation` (L, N, N) every
  input pair over all positions and channels. Runs the model once in eval mode, then restores
  each module's own mode (so it can be called from a training loop's step callback).
  `batch_statistics=True`: in training mode instead, so that batch norm normalises with this
  batch's statistics (per channel over the batch and positions, as in training and as the
  theory's `stax.BatchNorm`); the running statistics and random streams are restored after.

  >>> import numpy as np
  >>> from mimictheory.nn import make_model, signals
  >>> net = make_model("vgg11", classes=10, norm="mimic", width=0.125)
  >>> sig = signals(net, np.random.default_rng(0).normal(size=(4, 32, 32, 3)))
  >>> sig.mean.shape, sig.q.shape, sig.correlation.shape      # VGG11: eight convs
  ((8,), (8, 4), (8, 4, 4))
  """
  outputs = []
  token = _RECORDING.set(outputs)
  modes = _modes(model)
  kept = (jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat, nnx.RngState))
          if batch_statistics else ())  # copies: the state holds the live variables
  try:
    model.train() if batch_statistics else model.eval()
    model(x)
  finally:
    _RECORDING.reset(token)
    for module, attributes in modes:
      for name, value in attributes.items():
        setattr(module, name, value)
    if kept:
      nnx.update(model, *kept)
  rows = []
  for y in outputs:
    mean, variance = unit_statistics(y.reshape(-1, y.shape[-1]))
    q, correlation = pair_statistics(y.reshape(y.shape[0], -1))
    rows.append(Signal(mean, variance, q, correlation))
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *rows)


MODELS = {
    "vgg11": lambda **kw: VGG(11, **kw), "vgg16": lambda **kw: VGG(16, **kw),
    "resnet18": lambda **kw: ResNet(18, **kw), "resnet50": lambda **kw: ResNet(50, **kw),
    "shufflenetv2": lambda **kw: ShuffleNetV2(**kw), "squeezenet": lambda **kw: SqueezeNet(**kw),
}


def make_model(name: str, classes: int = 100, norm: str = "mimic", seed: int = 0,
               width: float = 1.0, residual_init="official",
               fold_scalars: bool = True) -> nnx.Module:
  """A CIFAR model by name (see `MODELS`) with the given `norm`; `residual_init` sets the
  residual scalars of ResNet and ShuffleNetV2 ("official", a constant or a callable), and
  `fold_scalars` whether those scalars are folded into a conv (True) or multiply the
  activation as in the official code (False; same function, more memory).

  >>> import jax.numpy as jnp
  >>> from mimictheory.nn import make_model
  >>> make_model("resnet18", classes=10, width=0.125)(jnp.ones((2, 32, 32, 3))).shape
  (2, 10)
  """
  checks.check_choice("model", name, tuple(MODELS))
  extra = ({"residual_init": residual_init, "fold_scalars": fold_scalars}
           if name in ("resnet18", "resnet50", "shufflenetv2") else {})
  return MODELS[name](classes=classes, norm=norm, rngs=nnx.Rngs(seed), width=width, **extra)
