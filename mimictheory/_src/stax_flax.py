"""The Flax NNX model of a `mimictheory.stax` description: the network that trains.

`from_stax(network, input_shape, rngs)` builds it layer by layer from the training library's
own modules: `Dense` -> a dense layer (a `CentredKernel` under weight mean, re-centred by
`project_weight_mean` after every step), activations as functions, `BatchNorm` ->
`nnx.BatchNorm` without affine parameters (batch statistics in training mode, running ones in
eval mode), `LayerNorm` -> `nnx.LayerNorm` without affine parameters, `Scale` -> a learnable
`ResidualScalar`, `Conv` -> a convolution with its padding, `Flatten` and `GlobalAvgPool` as
functions; `serial`, `parallel`, `FanOut`, `FanInSum` and `Identity` as their structure.
With `params` (the description's `init_fn` tree) the model starts from those parameters,
converted from the NTK parameterisation
(W_std/√n · W, b_std · b) to the standard one the optimiser trains, so that its forward pass in
training mode is the description's `apply_fn` (tested).

Which module builds which layer is decided here, in one table (`_BUILDERS`), from the layer's
class: theory (`stax`) imports nothing of Flax.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from mimictheory._src import stax
from mimictheory._src.models import _RECORDING
from mimictheory._src.nn import CentredKernel, ResidualScalar, centre_kernel

__all__ = ["StaxModel", "from_stax"]


class _Dense(nnx.Module):
  def __init__(self, layer: stax.Dense, n: int, params, rngs):
    if params is None:
      _, params = layer.init(rngs.params(), (1, n))
    w, b = params
    kernel = layer.W_std / math.sqrt(n) * jnp.asarray(w, jnp.float32)
    self.kernel = CentredKernel(centre_kernel(kernel)) if layer.weight_mean else nnx.Param(kernel)
    self.bias = None if b is None else nnx.Param(layer.b_std * jnp.asarray(b, jnp.float32))

  def __call__(self, x):
    y = x @ self.kernel[...]
    return y if self.bias is None else y + self.bias[...]


class _Conv(nnx.Module):
  """A convolution with the description's padding (VALID, SAME or CIRCULAR), stride 1; its
  kernel a `CentredKernel` under weight mean (each output channel's k_h k_w C weights)."""

  def __init__(self, layer: stax.Conv, channels: int, params, rngs):
    if params is None:
      _, params = layer.init(rngs.params(), (1, *layer.filter_shape, channels))
    w, b = params
    fan_in = layer.filter_shape[0] * layer.filter_shape[1] * channels
    kernel = layer.W_std / math.sqrt(fan_in) * jnp.asarray(w, jnp.float32)
    self.kernel = CentredKernel(centre_kernel(kernel)) if layer.weight_mean else nnx.Param(kernel)
    self.bias = None if b is None else nnx.Param(layer.b_std * jnp.asarray(b, jnp.float32))
    self.filter_shape, self.padding = layer.filter_shape, layer.padding

  def __call__(self, x):
    pads = [stax._pads(n, k, self.padding) for n, k in zip(x.shape[1:3], self.filter_shape)]
    if self.padding == "CIRCULAR":
      x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap")
      pads = [(0, 0), (0, 0)]
    y = jax.lax.conv_general_dilated(x, self.kernel[...], (1, 1), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y if self.bias is None else y + self.bias[...]
    recording = _RECORDING.get()
    if recording is not None:  # `nn.signals` is listening, as for the models' convolutions
      recording.append(y)
    return y


class _Function(nnx.Module):
  def __init__(self, fn):
    self.fn = fn

  def __call__(self, x):
    return self.fn(x)


class _BatchNorm(nnx.Module):
  def __init__(self, layer: stax.BatchNorm, n: int, rngs):
    self.norm = nnx.BatchNorm(n, use_bias=False, use_scale=False, epsilon=layer.epsilon,
                              momentum=0.9, rngs=rngs)

  def __call__(self, x):
    return self.norm(x)


class _LayerNorm(nnx.Module):
  def __init__(self, layer: stax.LayerNorm, n: int, rngs):
    self.norm = nnx.LayerNorm(n, use_bias=False, use_scale=False, epsilon=layer.eps, rngs=rngs)

  def __call__(self, x):
    return self.norm(x)


class _Serial(nnx.Module):
  def __init__(self, layers):
    self.layers = nnx.List(layers)

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class _Parallel(nnx.Module):
  def __init__(self, layers):
    self.layers = nnx.List(layers)

  def __call__(self, xs):
    return [layer(x) for layer, x in zip(self.layers, xs)]


def _width(shape):
  return shape if isinstance(shape, list) else shape[-1]


def _build(layer, shape, params, rngs):
  """(Flax module, output shape) of one description layer."""
  for cls, builder in _BUILDERS:
    if isinstance(layer, cls):
      return builder(layer, shape, params, rngs)
  raise TypeError(f"{type(layer).__name__} has no Flax counterpart in mimictheory.nn.from_stax")


def _serial(layer, shape, params, rngs):
  modules = []
  for i, sub in enumerate(layer.layers):
    module, shape = _build(sub, shape, None if params is None else params[i], rngs)
    modules.append(module)
  return _Serial(modules), shape


def _parallel(layer, shapes, params, rngs):
  built = [_build(sub, s, None if params is None else params[i], rngs)
           for i, (sub, s) in enumerate(zip(layer.layers, shapes))]
  return _Parallel([m for m, _ in built]), [s for _, s in built]


_BUILDERS = (
    (stax.Dense, lambda l, s, p, r: (_Dense(l, s[-1], p, r), tuple(s[:-1]) + (l.out_dim,))),
    (stax.Conv, lambda l, s, p, r: (_Conv(l, s[-1], p, r), l._out_shape(s))),
    (stax._Flatten, lambda l, s, p, r: (_Function(lambda x: x.reshape(x.shape[0], -1)),
                                        (s[0], math.prod(s[1:])))),
    (stax.AvgPool, lambda l, s, p, r: (_Function(partial(l.apply, ())), l._out_shape(s))),
    (stax._GlobalAvgPool, lambda l, s, p, r: (_Function(lambda x: x.mean(axis=(1, 2))),
                                              (s[0], s[-1]))),
    (stax.Elementwise, lambda l, s, p, r: (_Function(l.activation), s)),
    (stax.BatchNorm, lambda l, s, p, r: (_BatchNorm(l, s[-1], r), s)),
    (stax.LayerNorm, lambda l, s, p, r: (_LayerNorm(l, s[-1], r), s)),
    (stax.Scale, lambda l, s, p, r: (ResidualScalar(float(l.alpha)), s)),
    (stax._Serial, _serial),
    (stax._Parallel, _parallel),
    (stax._FanOut, lambda l, s, p, r: (_Function(lambda x, n=l.num: [x] * n), [s] * l.num)),
    (stax._FanInSum, lambda l, s, p, r: (_Function(lambda xs: sum(xs[1:], xs[0])), s[0])),
    (stax._IdentityLayer, lambda l, s, p, r: (_Function(lambda x: x), s)),
)


class StaxModel(nnx.Module):
  """The Flax NNX model of a description (see `from_stax`); `description` keeps the source.

  >>> from mimictheory import stax
  >>> from mimictheory.nn import from_stax
  >>> model = from_stax(stax.serial(stax.Dense(4), stax.Relu()), (2, 3))
  >>> type(model).__name__, model.output_shape
  ('StaxModel', (2, 4))
  """

  def __init__(self, network: stax.Network, input_shape, rngs: nnx.Rngs, params=None):
    self.description = network
    self.body, self.output_shape = _build(network, tuple(input_shape), params, rngs)

  def __call__(self, x):
    return self.body(x)


def from_stax(network: stax.Network, input_shape, rngs: nnx.Rngs | None = None,
              params=None) -> StaxModel:
  """The Flax NNX model of `network` for inputs of `input_shape` (batch first); `params`: the
  description's parameters (its `init_fn` tree) to start from, else drawn from `rngs`.

  >>> import jax, numpy as np
  >>> from flax import nnx
  >>> from mimictheory import stax
  >>> from mimictheory.nn import from_stax
  >>> net = stax.serial(stax.Dense(64, W_std=2**0.5, weight_mean=True), stax.Relu(),
  ...                   stax.Dense(3, W_std=2**0.5))
  >>> _, params = net.init_fn(jax.random.key(0), (5, 8))
  >>> model = from_stax(net, (5, 8), params=params)
  >>> x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
  >>> bool(np.allclose(model(x), net.apply_fn(params, x), atol=1e-5))
  True
  """
  return StaxModel(network, input_shape, rngs or nnx.Rngs(0), params)
