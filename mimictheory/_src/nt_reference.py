"""The neural-tangents side of the cross-check; run as a script in the reference environment.

    <reference python> nt_reference.py request.npz result.npz

This file imports only NumPy, JAX and (in `main`) neural-tangents, never the rest of
mimictheory, whose JAX is newer, so that it runs in the separate environment `make nt-env`
creates (JAX 0.4.25, neural-tangents 0.6.5). Importing it has no side effects, so the main
package shares `timed` with it. neural-tangents' top-level import loads
`neural_tangents.experimental`, which needs TensorFlow; nothing here uses it, so an empty module
stands in for it and TensorFlow is never installed.

The request holds `x` (N, d), `cases` (a JSON list of {activation, depth, sw2, sb2} and
optionally the Gauss–Hermite `degree`),
`networks` (a JSON list of {activation, depth, width, sw2, sb2}) with their parameters as
`net{i}_{name}` arrays, and `repeat` (timing repeats, 0 for none). The result holds, per case i,
`nngp{i}`, `ntk{i}`, per network `entk{i}` (and `entk{i}_impl{k}` for every implementation k
when timing), the timings as `time_*` entries (seconds, median over repeats, compiled).
Optionally `images` (N, H, W, C) and `conv_cases` (a JSON list of {activation, depth, sw2, sb2,
filter, padding, readout}: `depth` convolutions, then a "flatten", "pool" or "avgpool" readout
and a Dense), giving
`conv_nngp{i}`, `conv_ntk{i}` and `time_conv{i}`. Optionally `predict_*` (kernels, targets,
times; see `reference_predict`), giving neural-tangents' `predict` outputs as `predict_*` and
`time_predict`.
"""
import json
import sys
import time
import types

import jax
import numpy as np

GAUSS_HERMITE_DEGREE = 200  # for activations neural-tangents has no closed form for


def load_neural_tangents():
  """Import neural-tangents without TensorFlow and switch this process to float64."""
  sys.modules.setdefault("neural_tangents.experimental",
                         types.ModuleType("neural_tangents.experimental"))
  jax.config.update("jax_enable_x64", True)
  import neural_tangents
  return neural_tangents


def activation_layer(name: str, degree: int = GAUSS_HERMITE_DEGREE):
  """The neural-tangents layer of an activation named as in mimictheory's registry (`degree`:
  the Gauss–Hermite degree of `ElementwiseNumerical` where there is no closed form)."""
  from neural_tangents import stax
  closed = {
      "relu": stax.Relu, "erf": stax.Erf, "identity": stax.Identity,
      "gelu": lambda: stax.Gelu(approximate=False),
      "leaky_relu": lambda: stax.LeakyRelu(0.01),  # jax.nn.leaky_relu's default slope
  }
  if name in closed:
    return closed[name]()
  numerical = {"tanh": jax.numpy.tanh, "swish": jax.nn.silu, "softplus": jax.nn.softplus}
  return stax.ElementwiseNumerical(numerical[name], deg=degree)


def network(activation: str, depth: int, sw2: float, sb2: float, width: int = 1,
            degree: int = GAUSS_HERMITE_DEGREE):
  from neural_tangents import stax
  dense = lambda n: stax.Dense(n, W_std=sw2**0.5, b_std=sb2**0.5)  # noqa: E731
  return stax.serial(*[dense(width), activation_layer(activation, degree)] * depth, dense(1))


def conv_network(activation: str, depth: int, sw2: float, sb2: float, filter: int,
                 padding: str, readout: str):
  """`depth` convolutions (filter × filter, `padding`) and activations, then `Flatten` or
  `GlobalAvgPool` ("pool") or `AvgPool` 2 × 2 stride 2 and `Flatten` ("avgpool"), and a
  `Dense` readout."""
  from neural_tangents import stax
  conv = lambda: stax.Conv(1, (filter, filter), padding=padding, W_std=sw2**0.5,  # noqa: E731
                           b_std=sb2**0.5)
  head = {"flatten": stax.Flatten(), "pool": stax.GlobalAvgPool(),
          "avgpool": stax.serial(stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten())}[readout]
  return stax.serial(*[conv(), activation_layer(activation)] * depth, head,
                     stax.Dense(1, W_std=sw2**0.5, b_std=sb2**0.5))


def timed(fn, repeat):
  """(fn(), the median seconds of `repeat` further calls, nan if none); the first call compiles."""
  out = jax.block_until_ready(fn())
  if repeat <= 0:
    return out, float("nan")
  times = []
  for _ in range(repeat):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return out, float(np.median(times))


def nt_params(request, i, depth):
  """mimictheory's stacked parameters as stax.serial's list: (W, b) per Dense, () per activation."""
  get = lambda name: np.asarray(request[f"net{i}_{name}"])  # noqa: E731
  layers = [(get("w_in"), get("b_in")), ()]
  for j in range(depth - 1):
    layers += [(get("w_hidden")[j], get("b_hidden")[j]), ()]
  return layers + [(get("w_out"), get("b_out"))]


def main(request_path, result_path):
  nt = load_neural_tangents()
  request = np.load(request_path)
  x = np.asarray(request["x"])
  repeat = int(request["repeat"])
  result = {"jax_version": np.array(jax.__version__), "nt_version": np.array(nt.__version__)}
  for i, case in enumerate(json.loads(str(request["cases"]))):
    _, _, kernel_fn = network(case["activation"], case["depth"], case["sw2"], case["sb2"],
                              degree=case.get("degree", GAUSS_HERMITE_DEGREE))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    k, seconds = timed(lambda: kernel_fn(x, None, get=("nngp", "ntk")), repeat)
    result[f"nngp{i}"], result[f"ntk{i}"] = np.asarray(k.nngp), np.asarray(k.ntk)
    result[f"time_kernels{i}"] = np.array(seconds)
  for i, spec in enumerate(json.loads(str(request["networks"]))):
    _, apply_fn, _ = network(spec["activation"], spec["depth"], spec["sw2"], spec["sb2"],
                             spec["width"])
    params = nt_params(request, i, spec["depth"])
    impls = (1, 2, 3) if repeat > 0 else (3,)
    for impl in impls:
      ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                           implementation=impl))
      theta, seconds = timed(lambda: ntk_fn(x, None, params), repeat)
      result[f"entk{i}_impl{impl}"] = np.asarray(theta)
      result[f"time_entk{i}_impl{impl}"] = np.array(seconds)
    result[f"entk{i}"] = result[f"entk{i}_impl{impls[-1]}"]
  if "conv_cases" in request:
    images = np.asarray(request["images"])
    for i, case in enumerate(json.loads(str(request["conv_cases"]))):
      _, _, kernel_fn = conv_network(**case)
      kernel_fn = jax.jit(kernel_fn, static_argnames="get")
      k, seconds = timed(lambda: kernel_fn(images, None, get=("nngp", "ntk")), repeat)
      result[f"conv_nngp{i}"], result[f"conv_ntk{i}"] = np.asarray(k.nngp), np.asarray(k.ntk)
      result[f"time_conv{i}"] = np.array(seconds)
  if "predict_ntk" in request:
    result.update(reference_predict(nt, {k[len("predict_"):]: np.asarray(request[k])
                                          for k in request.files if k.startswith("predict_")}))
  np.savez(result_path, **result)


def reference_predict(nt, d):
  """neural-tangents' `predict` on the split kernels of `d`: gradient descent on the MSE at
  times, GP inference with the NNGP and the NTK, the learning-rate limit (and their time)."""
  import collections
  n = int(d["n_train"])
  pair = collections.namedtuple("K", ["nngp", "ntk"])
  block = lambda rows, cols: pair(d["nngp"][rows, cols], d["ntk"][rows, cols])  # noqa: E731
  train, test = slice(0, n), slice(n, None)
  start = time.perf_counter()
  fn = nt.predict.gradient_descent_mse(d["ntk"][train, train], d["y"],
                                       learning_rate=float(d["learning_rate"]),
                                       diag_reg=float(d["diag_reg"]))
  out = {}
  out["predict_train"], out["predict_test"] = fn(d["times"], d["f0"], d["ft0"],
                                                 d["ntk"][test, train])
  gp = nt.predict.gp_inference(block(train, train), d["y"])(None, block(test, train),
                                                            block(test, test))
  for g in ("nngp", "ntk"):
    out[f"predict_gp_{g}_mean"], out[f"predict_gp_{g}_cov"] = getattr(gp, g)
  out["predict_max_learning_rate"] = nt.predict.max_learning_rate(d["ntk"][train, train])
  seconds = time.perf_counter() - start
  out = {k: np.asarray(v) for k, v in out.items()}
  out["time_predict"] = np.array(seconds)
  return out


if __name__ == "__main__":
  main(*sys.argv[1:3])
