"""`mimictheory.stax`: one description gives the finite network and its kernels.

Checked against (1) neural-tangents 0.6.5, live, by running the same source text with either
library's `stax` bound (kernels to rounding, the finite network's outputs on neural-tangents'
own parameters); (2) the library's MLP functions (`mt.kernels`) for every norm; (3) Monte Carlo
over finite networks for what neural-tangents does not have (weight mean, batch norm).
"""
import json
import os
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mimictheory as mt
from mimictheory import stax
from conftest import run_on_host_devices

# Source text valid for neural-tangents and for mimictheory: `net` from `stax`.
PORTED = {
    "relu_mlp": "net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.2), stax.Relu(), "
                "stax.Dense(512, W_std=1.5, b_std=0.2), stax.Relu(), "
                "stax.Dense(1, W_std=1.5, b_std=0.2))",
    "erf_mlp": "net = stax.serial(*[stax.Dense(256, W_std=1.2, b_std=0.1), stax.Erf()] * 3, "
               "stax.Dense(1, W_std=1.2, b_std=0.1))",
    "gelu_leaky": "net = stax.serial(stax.Dense(64, W_std=1.3, b_std=0.3), "
                  "stax.Gelu(approximate=False), stax.Dense(64, W_std=1.4), "
                  "stax.LeakyRelu(0.1), stax.Dense(1))",
    "residual": textwrap.dedent("""
        block = stax.serial(stax.FanOut(2), stax.parallel(
            stax.serial(stax.Relu(), stax.Dense(128, W_std=1.4, b_std=0.1)), stax.Identity()),
            stax.FanInSum())
        net = stax.serial(stax.Dense(128, W_std=1.0), block, block, block, stax.Relu(),
                          stax.Dense(1, W_std=1.0))"""),
    "layer_norm": "net = stax.serial(stax.Dense(256, W_std=1.3, b_std=0.4), stax.LayerNorm(), "
                  "stax.Relu(), stax.Dense(256, W_std=1.5, b_std=0.1), stax.LayerNorm(), "
                  "stax.Erf(), stax.Dense(1))",
    # images (N, H, W, C): convolutions with a flatten readout (same-position covariances)
    # and with global pooling (every pair of positions), every padding, an even filter
    "conv_flatten": "net = stax.serial(stax.Conv(32, (3, 3), padding='SAME', W_std=1.5, "
                    "b_std=0.1), stax.Relu(), stax.Conv(32, (3, 3), padding='SAME', W_std=1.5, "
                    "b_std=0.1), stax.Relu(), stax.Flatten(), stax.Dense(1, W_std=1.5, "
                    "b_std=0.1))",
    "conv_pool": "net = stax.serial(stax.Conv(16, (3, 3), padding='CIRCULAR', W_std=1.3, "
                 "b_std=0.2), stax.Erf(), stax.Conv(16, (2, 2), padding='SAME', W_std=1.4), "
                 "stax.Relu(), stax.Conv(16, (3, 3), W_std=1.2), stax.Relu(), "
                 "stax.GlobalAvgPool(), stax.Dense(1, W_std=1.1, b_std=0.1))",
    "conv_residual": textwrap.dedent("""
        block = stax.serial(stax.FanOut(2), stax.parallel(
            stax.serial(stax.Relu(), stax.Conv(16, (3, 3), padding='SAME', W_std=1.4,
                                               b_std=0.1)), stax.Identity()), stax.FanInSum())
        net = stax.serial(stax.Conv(16, (3, 3), padding='SAME', W_std=1.2), block, block,
                          stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, W_std=1.1))"""),
    # windowed average pooling: strided, SAME with and without normalize_edges, CIRCULAR
    "conv_avgpool": "net = stax.serial(stax.Conv(16, (3, 3), padding='SAME', W_std=1.4, "
                    "b_std=0.1), stax.Relu(), stax.AvgPool((2, 2), strides=(2, 2)), "
                    "stax.Conv(16, (2, 2), padding='CIRCULAR', W_std=1.3), stax.Erf(), "
                    "stax.AvgPool((3, 3), padding='SAME', normalize_edges=True), "
                    "stax.AvgPool((2, 2), padding='CIRCULAR'), stax.AvgPool((2, 2), "
                    "padding='SAME'), stax.Flatten(), stax.Dense(1, W_std=1.2))",
}

DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from nt_reference import load_neural_tangents
    load_neural_tangents()
    import jax
    from neural_tangents import stax
    request = np.load(sys.argv[2])
    out = {}
    for name, source in json.loads(str(request["sources"])).items():
      images = name.startswith("conv")
      x1, x2 = (request["x1_images"], request["x2_images"]) if images else (request["x1"],
                                                                            request["x2"])
      scope = {"stax": stax}
      exec(source, scope)
      init_fn, apply_fn, kernel_fn = scope["net"]
      k = kernel_fn(x1, None, ("nngp", "ntk"))
      c = kernel_fn(x1, x2, ("nngp", "ntk"))
      out[name + "/nngp"], out[name + "/ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
      out[name + "/cross_nngp"], out[name + "/cross_ntk"] = np.asarray(c.nngp), np.asarray(c.ntk)
      _, params = init_fn(jax.random.PRNGKey(7), x1.shape)
      out[name + "/apply"] = np.asarray(apply_fn(params, x1))
      leaves, tree = jax.tree_util.tree_flatten(params)
      for i, leaf in enumerate(leaves):
        out[f"{name}/param{i}"] = np.asarray(leaf)
      out[name + "/treedef"] = np.array(str(tree))
    np.savez(sys.argv[3], **out)
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, nt_python):
  """neural-tangents' kernels, outputs and parameters for every source in PORTED."""
  python = nt_python
  tmp = tmp_path_factory.mktemp("nt")
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
  images = rng.normal(size=(6, 5, 5, 3)), rng.normal(size=(4, 5, 5, 3))
  np.savez(tmp / "request.npz", x1=x1, x2=x2, x1_images=images[0], x2_images=images[1],
           sources=json.dumps(PORTED))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  src = os.path.join(os.path.dirname(mt.__file__), "_src")
  subprocess.run([str(python), "-c", DRIVER, src, str(tmp / "request.npz"),
                  str(tmp / "result.npz")], check=True, env=env, timeout=600,
                 capture_output=True)
  return (x1, x2), images, dict(np.load(tmp / "result.npz"))


def _inputs_of(reference, name):
  vectors, images, _ = reference
  return images if name.startswith("conv") else vectors


def _ours(source):
  scope = {"stax": stax}
  exec(source, scope)
  return scope["net"]


def _close(a, b, rtol=1e-12):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  assert np.max(np.abs(a - b)) <= rtol * np.max(np.abs(b)), np.max(np.abs(a - b))


# neural-tangents' ReLU-family kernels take the angle at ρ = 1 as arctan2(√(q1q2 − q12²), q12):
# ~1e-8 on the Gram diagonal, where mimictheory pins ρ = 1 (crosscheck.NT_DIAGONAL_TOL)
DIAGONAL_TOL = {"relu_mlp": 1e-7, "erf_mlp": 1e-12, "gelu_leaky": 1e-7, "residual": 1e-7,
                "layer_norm": 1e-7, "conv_flatten": 1e-7, "conv_pool": 1e-7,
                "conv_avgpool": 1e-7, "conv_residual": 1e-7}


def _close_gram(a, b, diagonal_tol):
  a, b = np.asarray(a), np.asarray(b)
  eye = np.eye(len(b), dtype=bool)
  scale = np.max(np.abs(b))
  assert np.max(np.abs(a - b)[~eye]) <= 1e-12 * scale, np.max(np.abs(a - b)[~eye]) / scale
  assert np.max(np.abs(a - b)[eye]) <= diagonal_tol * scale, np.max(np.abs(a - b)[eye]) / scale


@pytest.mark.parametrize("name", list(PORTED))
def test_neural_tangents_source_runs_unchanged_with_the_same_kernels(reference, name):
  (x1, x2), nt = _inputs_of(reference, name), reference[2]
  init_fn, apply_fn, kernel_fn = _ours(PORTED[name])
  k = kernel_fn(x1, None, ("nngp", "ntk"))
  _close_gram(k.nngp, nt[name + "/nngp"], DIAGONAL_TOL[name])
  _close_gram(k.ntk, nt[name + "/ntk"], DIAGONAL_TOL[name])
  c = kernel_fn(x1, x2, ("nngp", "ntk"))
  _close(c.nngp, nt[name + "/cross_nngp"])
  _close(c.ntk, nt[name + "/cross_ntk"])


@pytest.mark.parametrize("name", list(PORTED))
def test_the_finite_network_is_neural_tangents_on_its_parameters(reference, name):
  """neural-tangents' parameters (its init_fn's tree), fed to our apply_fn, give its outputs:
  the same parameterisation and the same parameter layout."""
  (x1, _), nt = _inputs_of(reference, name), reference[2]
  init_fn, apply_fn, _ = _ours(PORTED[name])
  _, params = init_fn(jax.random.key(0), x1.shape)
  leaves, tree = jax.tree_util.tree_flatten(params)
  theirs = [nt[f"{name}/param{i}"] for i in range(len(leaves))]
  assert [np.shape(a) for a in leaves] == [a.shape for a in theirs]
  with jax.enable_x64(True):
    params = jax.tree_util.tree_unflatten(tree, [jnp.asarray(a) for a in theirs])
    out = apply_fn(params, jnp.asarray(x1))
  _close(out, nt[name + "/apply"], rtol=1e-6)  # neural-tangents ran in float32 there


# ----------------------------------------------------------------------------------------------
# The description against the library's MLP functions (every norm).
# ----------------------------------------------------------------------------------------------
def _mlp(act, depth, w_std, b_std, width=100, weight_mean=False, norm=None):
  dense = lambda: stax.Dense(width, W_std=w_std, b_std=b_std, weight_mean=weight_mean)  # noqa: E731
  layers = [dense()]
  for _ in range(depth):
    layers += ([norm] if norm is not None else []) + [act, dense()]
  return stax.serial(*layers)


@pytest.mark.parametrize("activation,layer", [("relu", stax.Relu()), ("erf", stax.Erf()),
                                              ("tanh", stax.Tanh())])
@pytest.mark.parametrize("norm", ["none", "weight_mean"])
def test_the_description_gives_the_mlp_kernels(activation, layer, norm):
  x = np.random.default_rng(1).normal(size=(7, 5))
  net = _mlp(layer, 3, 1.4, 0.3, weight_mean=norm == "weight_mean")
  k = net.kernel_fn(x)
  ref = mt.kernels(x, depth=3, activation=activation, sw2=1.96, sb2=0.09, norm=norm, fan_in=100)
  _close(k.nngp, ref.nngp, 1e-13)
  _close(k.ntk, ref.ntk, 1e-13)


@pytest.mark.parametrize("full_batch_limit,norm", [(False, "batch_norm"),
                                                   (True, "batch_norm_paper")])
def test_the_description_gives_the_batch_norm_kernels(full_batch_limit, norm):
  x = np.random.default_rng(2).normal(size=(8, 5))
  net = _mlp(stax.Relu(), 3, 1.4, 0.3, norm=stax.BatchNorm(full_batch_limit=full_batch_limit))
  k = net.kernel_fn(x)
  ref = mt.kernels(x, depth=3, activation="relu", sw2=1.96, sb2=0.09, norm=norm)
  _close(k.nngp, ref.nngp, 1e-13)
  _close(k.ntk, ref.ntk, 1e-12)
  with pytest.raises(ValueError, match="whole batch"):
    net.kernel_fn(x, x[:3])


# ----------------------------------------------------------------------------------------------
# Monte Carlo: what neural-tangents does not have.
# ----------------------------------------------------------------------------------------------
def _monte_carlo_nngp(net, x, width_out, networks, seed=0):
  """E over networks of f(x) f(x)ᵀ / units, with the standard error of each entry."""
  init_fn, apply_fn, _ = net

  @jax.jit
  def one(key):
    _, params = init_fn(key, x.shape)
    f = apply_fn(params, x)
    return f @ f.T / f.shape[1]

  with jax.enable_x64(True):
    samples = np.asarray(jax.lax.map(one, jax.random.split(jax.random.key(seed), networks)))
  return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(networks)


@pytest.mark.parametrize("case", ["weight_mean_relu", "batch_norm_relu", "residual_scaled",
                                  "layer_norm_after_relu", "conv_weight_mean_flatten",
                                  "conv_weight_mean_pool", "conv_batch_norm",
                                  "conv_last_batch_norm", "conv_numerical", "conv_residual"])
def test_monte_carlo_of_the_finite_network_matches_the_kernel(case):
  """The finite network's output covariance at width 512 (convolutions: 128 channels) over 64
  networks against kernel_fn's NNGP, within 5 standard errors plus the O(1/width)
  finite-width correction. The images have channel means far from 0, so weight mean at the
  input layer (the exact patch mean) and after each ReLU (E[φ] per position) both matter."""
  x = np.random.default_rng(3).normal(size=(6, 4))
  width = 512
  if case.startswith("conv"):
    x = np.random.default_rng(3).normal(size=(6, 5, 5, 3)) + 1.0
    width = 128
    conv = lambda pad: stax.Conv(width, (3, 3), padding=pad, W_std=1.6, b_std=0.2,  # noqa: E731
                                 weight_mean=True)
    head = ([stax.Flatten()] if case.endswith("flatten") else
            [stax.GlobalAvgPool(), stax.Dense(width, W_std=1.3, weight_mean=True)])
    net = stax.serial(conv("SAME"), stax.Relu(), conv("CIRCULAR"), stax.Relu(), conv("VALID"),
                      *head)
    if case == "conv_residual":  # weight-mean residual blocks with the branch scalar 1/√l
      def block(l):
        branch = stax.serial(stax.Relu(), conv("SAME"), stax.Scale(l**-0.5))
        return stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()),
                           stax.FanInSum())
      net = stax.serial(conv("SAME"), block(1), block(2), block(3), stax.Relu(),
                        stax.GlobalAvgPool(), stax.Dense(width, W_std=1.3))
    if case == "conv_numerical":  # tanh and GELU by Mehler's series over (input, position)
      net = stax.serial(conv("SAME"), stax.Tanh(), conv("CIRCULAR"), stax.Gelu(),
                        stax.GlobalAvgPool(), stax.Dense(width, W_std=1.3))
    if case == "conv_last_batch_norm":  # MimicNorm: weight mean, then BN on the logits only
      net = stax.serial(conv("SAME"), stax.Relu(), conv("SAME"), stax.Relu(),
                        stax.GlobalAvgPool(), stax.Dense(width, W_std=1.3), stax.BatchNorm())
    if case == "conv_batch_norm":  # each channel over the batch and the positions: exact BN
      x = x[:3, :4, :4]  # at the batch of N·HW = 48 (input, position) pairs
      plain = lambda: stax.Conv(width, (3, 3), padding="SAME", W_std=1.4, b_std=0.3)  # noqa: E731
      net = stax.serial(plain(), stax.BatchNorm(), stax.Relu(), plain(), stax.BatchNorm(),
                        stax.Relu(), stax.Flatten())
  elif case == "weight_mean_relu":
    net = stax.serial(stax.Dense(width, W_std=1.7, b_std=0.2, weight_mean=True), stax.Relu(),
                      stax.Dense(width, W_std=1.7, b_std=0.2, weight_mean=True), stax.Relu(),
                      stax.Dense(width, W_std=1.7, weight_mean=True))
  elif case == "batch_norm_relu":
    net = stax.serial(stax.Dense(width, W_std=1.4), stax.BatchNorm(), stax.Relu(),
                      stax.Dense(width, W_std=1.4), stax.BatchNorm(), stax.Relu(),
                      stax.Dense(width, W_std=1.4))
  elif case == "layer_norm_after_relu":  # the unit mean E[relu] is subtracted
    net = stax.serial(stax.Dense(width, W_std=1.4, b_std=0.5), stax.Relu(), stax.LayerNorm(),
                      stax.Dense(width, W_std=1.4), stax.Relu(), stax.LayerNorm())
  else:
    branch = stax.serial(stax.Relu(), stax.Dense(width, W_std=1.4), stax.Scale(0.5))
    block = stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum())
    net = stax.serial(stax.Dense(width, W_std=1.0), block, block, stax.Relu(),
                      stax.Dense(width, W_std=1.0))
  theory = net.kernel_fn(x).nngp
  mean, se = _monte_carlo_nngp(net, jnp.asarray(x), width, 64)
  scale = np.max(np.abs(theory))
  assert np.all(np.abs(mean - theory) <= 5 * se + 4.0 / width * scale), (
      np.max(np.abs(mean - theory) / (se + 1e-12)))


def test_the_monte_carlo_check_can_fail():
  """The same comparison rejects a kernel with σw² off by 10%."""
  x = np.random.default_rng(3).normal(size=(6, 4))
  net = stax.serial(stax.Dense(512, W_std=1.7, weight_mean=True), stax.Relu(),
                    stax.Dense(512, W_std=1.7, weight_mean=True))
  wrong = stax.serial(stax.Dense(512, W_std=1.7, weight_mean=True), stax.Relu(),
                      stax.Dense(512, W_std=1.7 * 1.05, weight_mean=True)).kernel_fn(x).nngp
  mean, se = _monte_carlo_nngp(net, jnp.asarray(x), 512, 64)
  assert not np.all(np.abs(mean - wrong) <= 5 * se + 4.0 / 512 * np.max(np.abs(wrong)))


def test_bad_descriptions_are_refused_by_name():
  with pytest.raises(ValueError, match="out_dim"):
    stax.Dense(0)
  with pytest.raises(ValueError, match="W_std"):
    stax.Dense(4, W_std=-1.0)
  with pytest.raises(ValueError, match="parameterization"):
    stax.Dense(4, parameterization="standard")
  with pytest.raises(TypeError, match="stax networks"):
    stax.serial(stax.Dense(4), (lambda *a: None, None, None))
  with pytest.raises(ValueError, match="full_batch_limit"):
    stax.serial(stax.Dense(4), stax.BatchNorm(), stax.Tanh()).kernel_fn(
        np.random.default_rng(0).normal(size=(5, 3)))
  with pytest.raises(ValueError, match="x1"):
    stax.Dense(4).kernel_fn(np.full((3, 2), np.nan))
  with pytest.raises(ValueError, match="mesh: only descriptions without BatchNorm"):
    stax.serial(stax.Dense(4), stax.BatchNorm(full_batch_limit=True)).kernel_fn(
        np.random.default_rng(0).normal(size=(5, 3)), mesh=mt.row_mesh())


def test_the_fan_in_factor_belongs_to_weight_mean_only():
  """Found by the description's comparison: `kernels(activation="tanh", norm="none",
  fan_in=100)` multiplied every layer by Lemma 1's (n-1)/n (1.2% off at depth 3), which only
  weight mean's centring has; the closed forms never did. Both routes now agree."""
  x = np.random.default_rng(1).normal(size=(7, 5))
  for activation in ("tanh", "relu"):
    with_n = mt.kernels(x, depth=3, activation=activation, sw2=1.96, sb2=0.09, fan_in=100)
    without = mt.kernels(x, depth=3, activation=activation, sw2=1.96, sb2=0.09)
    _close(with_n.nngp, without.nngp, 1e-15)


# ----------------------------------------------------------------------------------------------
# The Flax model of a description.
# ----------------------------------------------------------------------------------------------
def _examples(width=64):
  """The README's three: an MLP, a residual MLP with weight mean and α_l = 1/√l, a BN MLP."""
  mlp = stax.serial(stax.Dense(width, W_std=2**0.5), stax.Relu(),
                    stax.Dense(width, W_std=2**0.5), stax.Relu(), stax.Dense(3, W_std=2**0.5))

  def block(l):
    branch = stax.serial(stax.Relu(), stax.Dense(width, W_std=2**0.5, weight_mean=True),
                         stax.Scale(l**-0.5))
    return stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum())

  residual = stax.serial(stax.Dense(width, W_std=2**0.5, weight_mean=True),
                         *[block(l) for l in range(1, 5)], stax.Relu(), stax.Dense(3))
  bn_net = stax.serial(stax.Dense(width, W_std=2**0.5), stax.BatchNorm(), stax.Relu(),
                       stax.Dense(width, W_std=2**0.5), stax.BatchNorm(), stax.Relu(),
                       stax.Dense(3, W_std=2**0.5))
  return {"mlp": mlp, "residual": residual, "batch_norm": bn_net}


@pytest.mark.parametrize("name", ["mlp", "residual", "batch_norm", "layer_norm",
                                  pytest.param("conv", marks=pytest.mark.slow)])
def test_the_flax_model_is_the_description_on_the_same_parameters(name):
  """from_stax(net, params=...) in training mode computes net.apply_fn(params, ·) (float32),
  and its kernels exist; after one SGD step weight mean still holds."""
  from flax import nnx
  from mimictheory.nn import CentredKernel, from_stax, project_weight_mean
  from mimictheory.train import optimizer
  others = {"layer_norm": stax.serial(stax.Dense(64, W_std=1.4, b_std=0.2), stax.LayerNorm(),
                                      stax.Relu(), stax.Dense(3)),
            "conv": stax.serial(stax.Conv(16, (3, 3), padding="CIRCULAR", W_std=1.4,
                                          b_std=0.2, weight_mean=True), stax.Relu(),
                                stax.AvgPool((2, 2), padding="SAME"),
                                stax.Conv(16, (2, 2), padding="SAME", W_std=1.4), stax.Relu(),
                                stax.Conv(8, (3, 3), W_std=1.4), stax.Relu(), stax.Flatten(),
                                stax.Dense(3))}
  net = others[name] if name in others else _examples()[name]
  shape = (16, 6, 6, 2) if name == "conv" else (16, 8)
  x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
  _, params = net.init_fn(jax.random.key(1), x.shape)
  model = from_stax(net, x.shape, params=params)
  model.train()
  want = np.asarray(net.apply_fn(params, jnp.asarray(x)))
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-4,
                             atol=1e-5 * np.max(np.abs(want)))
  assert net.kernel_fn(x.astype(np.float64)).ntk.shape == (16, 16)
  opt = optimizer(model, 0.1)
  y = jnp.asarray(np.arange(16) % 3)

  def loss(m):
    return jnp.mean(-jax.nn.log_softmax(m(x))[jnp.arange(16), y])

  before = float(loss(model))
  for _ in range(5):
    grads = nnx.grad(loss)(model)
    opt.update(model, grads)
    project_weight_mean(model)
  assert float(loss(model)) < before
  for kernel in jax.tree_util.tree_leaves(nnx.state(model, CentredKernel)):
    fan_in = tuple(range(np.ndim(kernel) - 1))  # every axis but the output units / channels
    assert np.abs(np.asarray(kernel).mean(axis=fan_in)).max() < 1e-5
  assert bool(jax.tree_util.tree_leaves(nnx.state(model, CentredKernel))) == (
      name in ("residual", "conv"))


def test_the_readme_example_runs():
  """The README's `mimictheory.stax` block, executed as written (it cannot drift)."""
  import pathlib
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme.split("### Networks as data: `mimictheory.stax`")[1]
  source = section.split("```python\n")[1].split("```")[0]
  scope = {}
  exec(source, scope)
  k, f, model = scope["k"], scope["f"], scope["model"]
  assert k.nngp.shape == (8, 8) and f.shape == (8, 1)
  model.train()
  np.testing.assert_allclose(np.asarray(model(np.asarray(scope["x"], np.float32))),
                             np.asarray(f), rtol=1e-4, atol=1e-4 * float(np.abs(f).max()))


@pytest.mark.parametrize("norm", ["none", "batch_norm"])
def test_per_layer_kernels_and_spectra_from_the_description(norm):
  """layer_kernels after every Dense (after every BatchNorm with BN) are mt.layer_kernels'
  pre-activations; ntk_spectrum is mt.ntk_spectrum at every depth."""
  x = np.random.default_rng(5).normal(size=(8, 4))
  bn = [stax.BatchNorm()] if norm == "batch_norm" else []
  dense = lambda: stax.Dense(64, W_std=1.4, b_std=0.3)  # noqa: E731
  net = stax.serial(dense(), *[*bn, stax.Relu(), dense()] * 4)
  ks = net.layer_kernels(x, after=stax.BatchNorm if bn else stax.Dense)
  ref = mt.layer_kernels(x, depth=4 if bn else 5, activation="relu", sw2=1.96, sb2=0.09,
                         norm=norm)
  assert len(ks) == len(ref)
  for k, r in zip(ks, ref):
    _close(k.nngp, r, 1e-12)
  spectrum = net.ntk_spectrum(x)
  theirs = mt.ntk_spectrum(x, depth=4, activation="relu", sw2=1.96, sb2=0.09, norm=norm)
  assert spectrum.depths.tolist() == [0, 1, 2, 3, 4]
  _close(spectrum.eigenvalues[1:], theirs.eigenvalues, 1e-11)
  _close(spectrum.condition[1:], theirs.condition, 1e-9)
  with pytest.raises(ValueError, match="no such layer"):
    net.layer_kernels(x, after=stax.LayerNorm)


@pytest.mark.parametrize("norm,alpha", [("none", "official"), ("weight_mean", "sqrt"),
                                        ("batch_norm", "one"), ("batch_norm_paper", "sqrt")])
def test_a_residual_description_gives_the_residual_kernels(norm, alpha):
  """FanOut / parallel(branch, Identity) / FanInSum with the branch [BN] φ Dense Scale(α_l) is
  mt.residual_kernels' network (its readout a plain Dense)."""
  x = np.random.default_rng(6).normal(size=(7, 5))
  depth, sw2, sb2 = 6, 2.0, 0.1
  wm = norm == "weight_mean"
  bn = {"batch_norm": [stax.BatchNorm()],
        "batch_norm_paper": [stax.BatchNorm(full_batch_limit=True)]}.get(norm, [])
  dense = lambda weight_mean=wm: stax.Dense(100, W_std=sw2**0.5, b_std=sb2**0.5,  # noqa: E731
                                            weight_mean=weight_mean)
  alphas = mt.residual_scalars(alpha, depth)

  def block(a):
    branch = stax.serial(*bn, stax.Relu(), dense(), stax.Scale(float(a)))
    return stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum())

  net = stax.serial(dense(), *[block(a) for a in alphas], dense(weight_mean=False))
  k = net.kernel_fn(x)
  ref = mt.residual_kernels(x, depth=depth, activation="relu", sw2=sw2, sb2=sb2, norm=norm,
                            alpha=alpha, fan_in=100)
  _close(k.nngp, ref.nngp, 1e-12)
  _close(k.ntk, ref.ntk, 1e-12)


@pytest.mark.parametrize("norm", ["none", "weight_mean", "batch_norm_paper"])
def test_the_mean_field_maps_of_a_stack_are_its_deep_limit(norm):
  """A stack's MeanField is the library's one-layer maps at its (activation, σw², σb², norm,
  fan-in), and those maps are what the description's own kernels do at depth (chaotic erf,
  ξ_c ≈ 5.4, 200 layers): the diagonal of the NNGP settles at q*, the correlation of two
  inputs at the stable fixed point. (With BN the batch's centring keeps a finite batch's
  correlations off the B -> ∞ fixed point, so only χ1 is compared there.)"""
  wm = norm == "weight_mean"
  bn = [stax.BatchNorm(full_batch_limit=True)] if norm == "batch_norm_paper" else []
  sw2, sb2 = 4.0, 0.05
  dense = lambda: stax.Dense(200, W_std=sw2**0.5, b_std=sb2**0.5, weight_mean=wm)  # noqa: E731
  net = stax.serial(dense(), *[*bn, stax.Erf(), dense()] * 200)
  mf = net.mean_field()
  assert (mf.norm, mf.fan_in) == (norm, 200 if wm else None)
  assert float(mf.chi1()) == pytest.approx(  # σw² through W_std = √σw²: one ulp
      float(mt.chi1("erf", sw2, sb2, norm=norm, fan_in=200 if wm else None)), rel=1e-14)
  x = np.random.default_rng(7).normal(size=(6, 3)) * 0.5
  k = net.kernel_fn(x).nngp
  if norm == "batch_norm_paper":
    return
  np.testing.assert_allclose(np.diag(k), float(mf.qstar()), rtol=1e-10)
  fp = mf.fixed_points()
  stable = [float(p) for p, s in zip(fp.points, fp.stable) if s]
  rho = k / np.sqrt(np.outer(np.diag(k), np.diag(k)))
  np.testing.assert_allclose(rho[~np.eye(6, dtype=bool)], stable[0], atol=1e-9)


def test_mean_field_refuses_what_is_not_a_stack():
  with pytest.raises(ValueError, match="activations differ"):
    stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(8), stax.Erf(), stax.Dense(8)).mean_field()
  with pytest.raises(ValueError, match="W_std"):
    stax.serial(stax.Dense(8, W_std=1.0), stax.Relu(), stax.Dense(8, W_std=2.0)).mean_field()
  with pytest.raises(ValueError, match="layer 2 is a"):
    stax.serial(stax.Dense(8), stax.LayerNorm(), stax.Dense(8)).mean_field()
  exact = stax.serial(stax.Dense(8), stax.BatchNorm(), stax.Relu(), stax.Dense(8)).mean_field()
  with pytest.raises(ValueError, match="full_batch_limit"):
    exact.qstar()
  with pytest.raises(ValueError, match="batch"):
    exact.chi1()
  chi = stax.serial(stax.Dense(8), stax.BatchNorm(), stax.Relu(), stax.Dense(8)).mean_field(
      batch=8).chi1()
  assert float(chi) == float(mt.chi1("relu", 1.0, 0.0, norm="batch_norm", batch=8))


def test_a_description_sharded_over_four_host_devices_matches_one_device(tmp_path):
  """kernel_fn(..., mesh=row_mesh()) on 4 forced CPU devices (a subprocess: the device count
  is fixed when JAX starts) gives the single-device Gram matrix, symmetric and cross, for a
  description with weight mean, LayerNorm and a residual block; and the tiled route equals
  the whole-matrix one (one XLA program for the whole Gram matrix)."""
  script = textwrap.dedent("""
      import json, numpy as np, jax, mimictheory as mt
      from mimictheory import stax
      from mimictheory._src import stax as S
      block = stax.serial(stax.FanOut(2), stax.parallel(
          stax.serial(stax.Erf(), stax.Dense(64, W_std=1.3, weight_mean=True)),
          stax.Identity()), stax.FanInSum())
      net = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.2, weight_mean=True), block, block,
                        stax.LayerNorm(), stax.Relu(), stax.Dense(1, W_std=1.4))
      x = np.random.default_rng(1).normal(size=(150, 6))
      ref = net.kernel_fn(x)
      out = net.kernel_fn(x, mesh=mt.row_mesh())
      cross = net.kernel_fn(x[:70], x[70:], mesh=mt.row_mesh())
      with jax.enable_x64(True):
        whole = S._compiled(net, jax.numpy.asarray(x), None, S._identical(x, None))
      err = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
      print(json.dumps({"devices": jax.device_count(), "sharded": err(out.ntk, ref.ntk),
                        "cross": err(cross.ntk, ref.ntk[:70, 70:]),
                        "whole": err(whole.ntk, ref.ntk),
                        "symmetric": bool((ref.ntk == ref.ntk.T).all())}))
  """)
  result = run_on_host_devices(script, tmp_path)
  assert result["devices"] == 4 and result["symmetric"]
  assert result["sharded"] < 1e-13 and result["cross"] < 1e-13 and result["whole"] < 1e-12


@pytest.mark.slow
def test_image_tiles_sharded_over_four_host_devices_match_one_device(tmp_path):
  """Image kernels behind a global pooling (every pair of positions), in tiles of 3 x 3
  inputs, sharded over 4 forced CPU devices: the same Gram matrix as one device and as the
  whole-matrix program, symmetric and cross."""
  script = textwrap.dedent("""
      import json, numpy as np, jax, mimictheory as mt
      from mimictheory import stax
      from mimictheory._src import stax as S
      err = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
      conv = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1,
                                   weight_mean=True), stax.Relu(),
                         stax.Conv(8, (3, 3), padding="CIRCULAR", W_std=1.4), stax.Erf(),
                         stax.GlobalAvgPool(), stax.Dense(1, W_std=1.2))
      img = np.random.default_rng(2).normal(size=(11, 5, 5, 2))
      img_ref = conv.kernel_fn(img, block_size=3)
      img_out = conv.kernel_fn(img, mesh=mt.row_mesh(), block_size=3)
      img_cross = conv.kernel_fn(img[:4], img[4:], mesh=mt.row_mesh(), block_size=2)
      with jax.enable_x64(True):
        img_whole = S._compiled(conv, jax.numpy.asarray(img), None, S._identical(img, None))
      print(json.dumps({"devices": jax.device_count(),
                        "images": [err(img_out.ntk, img_ref.ntk),
                                   err(img_cross.ntk, img_ref.ntk[:4, 4:]),
                                   err(img_whole.ntk, img_ref.ntk),
                                   err(img_whole.nngp, img_ref.nngp)],
                        "images_symmetric": bool((img_ref.ntk == img_ref.ntk.T).all())}))
  """)
  result = run_on_host_devices(script, tmp_path)
  assert result["devices"] == 4 and result["images_symmetric"]
  assert max(result["images"]) < 1e-12, result["images"]


@pytest.mark.slow
def test_image_kernels_in_tiles_equal_the_whole_matrix():
  """Small tiles (2 × 2 inputs, and row × column tiles of a cross kernel) behind a Flatten and
  behind a global pooling give the whole-matrix program's Gram matrix, exactly symmetric."""
  from mimictheory._src import stax as S
  img = np.random.default_rng(15).normal(size=(5, 4, 4, 2))
  body = [stax.Conv(8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, weight_mean=True),
          stax.Relu(), stax.Conv(8, (2, 2), padding="CIRCULAR", W_std=1.3), stax.Erf()]
  for head in (stax.Flatten(), stax.GlobalAvgPool()):
    net = stax.serial(*body, head, stax.Dense(1, W_std=1.2))
    tiled = net.kernel_fn(img, block_size=2)
    cross = net.kernel_fn(img[:3], img[2:], block_size=2)
    with jax.enable_x64(True):
      whole = S._compiled(net, jnp.asarray(img), None, S._identical(img, None))
      whole_cross = S._compiled(net, jnp.asarray(img[:3]), jnp.asarray(img[2:]), None)
    _close(tiled.ntk, whole.ntk, 1e-13)
    _close(tiled.nngp, whole.nngp, 1e-13)
    _close(cross.ntk, whole_cross.ntk, 1e-13)  # (a cross kernel pins no identical pair)
    assert np.array_equal(tiled.ntk, tiled.ntk.T)


def _numpy_mlp(x, depth, activation, sw2, sb2, norm, width):
  """The MLP's NNGP and NTK by an independent NumPy recursion of the closed forms: the
  arc-cosine kernels of order 1 and 0 for ReLU, Williams' arcsin kernel for erf; weight mean
  subtracts E[φ]E[φ] with Lemma 1's (n-1)/n (and centres the inputs); Theorem 2 centres K and Θ
  over the batch and divides by the mean centred variance."""
  n, d = x.shape
  if norm == "weight_mean":
    x = x - x.mean(axis=1, keepdims=True)
  k = sw2 * x @ x.T / d + sb2
  ntk = k.copy()
  f = (width - 1) / width if norm == "weight_mean" else 1.0
  for _ in range(depth):
    if norm == "batch_norm_paper":
      h = np.eye(n) - 1.0 / n
      k, ntk = h @ k @ h, h @ ntk @ h
      nu = np.mean(np.diag(k))
      k, ntk = k / nu, ntk / nu
    q = np.diag(k).copy()
    if activation == "relu":
      root = np.sqrt(np.outer(q, q))
      rho = np.clip(k / root, -1.0, 1.0)
      np.fill_diagonal(rho, 1.0)
      angle = np.arccos(rho)
      e = root * (np.sin(angle) + (np.pi - angle) * rho) / (2 * np.pi)
      deriv = (np.pi - angle) / (2 * np.pi)
      mean = np.sqrt(q / (2 * np.pi))
    else:  # erf
      norm2 = np.outer(1 + 2 * q, 1 + 2 * q)
      e = 2 / np.pi * np.arcsin(np.clip(2 * k / np.sqrt(norm2), -1, 1))
      deriv = 4 / np.pi / np.sqrt(norm2 - 4 * k**2)
      mean = np.zeros(n)
    if norm == "weight_mean":
      e = e - np.outer(mean, mean)
    k = sw2 * f * e + sb2
    ntk = k + sw2 * f * deriv * ntk
  return k, ntk


@pytest.mark.parametrize("norm,activation", [
    (norm, act) for norm in ("none", "weight_mean", "batch_norm", "batch_norm_paper")
    for act in ("relu", "erf") if (norm, act) != ("batch_norm", "erf")])  # exact BN: a·x+b·relu
def test_stax_mlp_is_the_librarys_mlp(norm, activation):
  """stax.mlp(depth, activation, σw², σb², norm, width), the network behind mt.kernels, against
  an independent NumPy recursion of the closed forms (exact BN: against batch_norm_kernels'
  own estimator, fixed nodes and error bounds); its mean field is the library's maps."""
  x = np.random.default_rng(8).normal(size=(8, 5))
  net = stax.mlp(3, activation, sw2=1.8, sb2=0.05, norm=norm, width=100)
  k = net.kernel_fn(x)
  if norm == "batch_norm":
    ref = mt.batch_norm_kernels(x, depth=3, activation=activation, sw2=1.8, sb2=0.05)
    nngp, ntk = ref.nngp, ref.ntk
  else:
    nngp, ntk = _numpy_mlp(x, 3, activation, 1.8, 0.05, norm, 100)
  _close(k.nngp, nngp, 1e-12)
  _close(k.ntk, ntk, 1e-11)
  assert np.array_equal(mt.kernels(x, depth=3, activation=activation, sw2=1.8, sb2=0.05,
                                   norm=norm, fan_in=100).ntk, k.ntk)  # the same network
  if norm != "batch_norm":
    assert float(net.mean_field().chi1()) == pytest.approx(
        float(mt.chi1(activation, 1.8, 0.05, norm=norm, fan_in=100)), rel=1e-13)
  with pytest.raises(ValueError, match="norm"):
    stax.mlp(3, norm="group_norm")


def test_the_nngp_alone_admits_an_activation_that_jumps():
  """get="nngp" computes no NTK: a step function (φ' a Dirac delta) has an NNGP, the orthant
  probability E[step(u) step(v)] = 1/4 + arcsin(ρ)/(2π), and its NTK is refused by name."""
  step = mt.Numerical(lambda s: jnp.where(s > 0, 1.0, 0.0), jumps=(0.0,), name="step")
  x = np.random.default_rng(9).normal(size=(5, 3))
  net = stax.serial(stax.Dense(8, W_std=1.3), stax.Elementwise(step))
  k = x @ x.T / 3
  rho = k / np.sqrt(np.outer(np.diag(k), np.diag(k)))
  np.fill_diagonal(rho, 1.0)
  _close(net.kernel_fn(x, get="nngp"), 0.25 + np.arcsin(np.clip(rho, -1, 1)) / (2 * np.pi),
         1e-10)
  assert net.kernel_fn(x, get="nngp").shape == (5, 5)
  whole = net.kernel_fn(x, get=("nngp",))
  assert whole._fields == ("nngp",)
  with pytest.raises(ValueError, match="Dirac delta"):
    net.kernel_fn(x)
  # and the NTK of a ReLU net asked alone equals the one computed with everything
  relu = stax.mlp(4, "relu", sw2=2.0, sb2=0.1, width=None)
  np.testing.assert_array_equal(relu.kernel_fn(x, get="nngp"), relu.kernel_fn(x).nngp)
  with pytest.raises(ValueError, match="infinite-width"):
    relu.init_fn(jax.random.key(0), x.shape)


def test_gradients_through_a_layers_parameters():
  """jax.grad of the kernels with respect to W_std and b_std (the description traced): ReLU
  without bias is positively homogeneous, so Σ K scales like W_std^(2(L+1)) and
  ∂ Σ K / ∂W_std = 2 (L + 1) Σ K / W_std exactly; with a bias, against central differences."""
  x = np.random.default_rng(10).normal(size=(6, 4))

  def total(w, b=None, what="nngp"):
    dense = lambda n: stax.Dense(n, W_std=w, b_std=b)  # noqa: E731
    net = stax.serial(dense(64), *[stax.Relu(), dense(64)] * 3)
    return jnp.sum(net.kernel_fn(x, get=what))

  with jax.enable_x64(True):
    grad = float(jax.grad(total)(1.3))
    value = float(total(1.3))
    assert grad == pytest.approx(2 * 4 * value / 1.3, rel=1e-12)
    for what in ("nngp", "ntk"):
      g = float(jax.grad(total, argnums=1)(1.3, 0.4, what))
      fd = (float(total(1.3, 0.4 + 1e-6, what)) - float(total(1.3, 0.4 - 1e-6, what))) / 2e-6
      assert g == pytest.approx(fd, rel=1e-7) and abs(g) > 1e-3
    jitted = jax.jit(lambda w: total(w, 0.4, "ntk"))(1.3)
    assert float(jitted) == pytest.approx(float(total(1.3, 0.4, "ntk")), rel=1e-13)


def test_one_spelling_of_each_norm_in_the_theory():
  """"bn" is batch norm in the theory as in the models (one spelling in results), and what each
  norm does to the maps is its rule, not a comparison of names."""
  from mimictheory._src.norms import rule
  x = np.random.default_rng(11).normal(size=(6, 4))
  np.testing.assert_array_equal(mt.kernels(x, depth=2, norm="bn").ntk,
                                mt.kernels(x, depth=2, norm="batch_norm").ntk)
  assert mt.make_layer("relu", norm="bn").norm == "batch_norm"
  assert mt.phase_diagram("erf", sw2=[1.5], sb2=[0.1], norm="bn").norm == "batch_norm"
  assert stax.norm_layers("bn") == (False, [stax.BatchNorm()])
  assert rule("weight_mean").fan_in_factor(4) == 0.75 and rule("none").fan_in_factor(4) == 1.0
  with pytest.raises(ValueError, match="norm must be one of"):
    rule("group_norm")


def test_convolutions_refuse_what_they_do_not_compute_by_name():
  """Images of the wrong rank, filters larger than the image, unknown paddings, strides,
  layers without an image kernel yet, and kernels beyond memory: a clear error before work."""
  img = np.random.default_rng(12).normal(size=(3, 4, 4, 2))
  cases = [
      (lambda: stax.serial(stax.Conv(8, (5, 5)), stax.Flatten()).kernel_fn(img),
       "larger than the image"),
      (lambda: stax.serial(stax.Conv(8, (3, 3))).kernel_fn(img[:, :, :, 0]), "dimensions"),
      (lambda: stax.Conv(8, (3,)), "filter_shape must be a pair"),
      (lambda: stax.Conv(8, (3, 3), padding="same"), "padding must be one of"),
      (lambda: stax.Conv(8, (3, 3), strides=(2, 2)), "strides must be"),
      (lambda: stax.serial(stax.Dense(8), stax.Conv(8, (3, 3))).kernel_fn(img[:, 0, 0]),
       "Conv needs image inputs"),
      (lambda: stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.LayerNorm(),
                           stax.Flatten()).kernel_fn(img), "LayerNorm on images"),
      # in tiles: even one pair of 256 x 256 images has 65536² pairs of positions
      (lambda: stax.serial(stax.Conv(8, (3, 3)), stax.GlobalAvgPool()).kernel_fn(
          np.ones((2, 256, 256, 1))), r"a tile of 1 x 1 inputs x 4294967296 pairs of positions"),
      (lambda: stax.serial(stax.Conv(8, (3, 3)), stax.GlobalAvgPool()).kernel_fn(
          np.ones((4, 96, 96, 1)), block_size=200), r"a tile of 4 x 4 inputs.*block_size"),
      # whole (BatchNorm couples the batch): all N² pairs at once
      (lambda: stax.serial(stax.Conv(8, (3, 3)), stax.BatchNorm(), stax.Relu(),
                           stax.GlobalAvgPool()).kernel_fn(np.ones((3000, 32, 32, 3))),
       "3000 x 3000 inputs x 1048576 pairs of positions"),
      (lambda: stax.Conv(None, (3, 3)).init_fn(jax.random.key(0), img.shape), "infinite-width"),
      (lambda: stax.serial(stax.AvgPool((5, 5)), stax.Flatten()).kernel_fn(img),
       "window_shape .* is larger than the image"),
      (lambda: stax.AvgPool((2, 0)), "window_shape"),
      (lambda: stax.AvgPool((2, 2), strides=(1,)), "strides must be a pair"),
      (lambda: stax.AvgPool((2, 2), padding="FULL"), "padding must be one of"),
      (lambda: stax.serial(stax.Flatten(), stax.AvgPool((2, 2))).kernel_fn(img),
       "AvgPool needs image inputs"),
  ]
  for call, needle in cases:
    with pytest.raises(ValueError, match=needle):
      call()


@pytest.mark.slow  # the Monte Carlo case conv_numerical runs by default
@pytest.mark.parametrize("readout", ["flatten", "pool"])
def test_numerical_activations_on_images_match_2d_quadrature(readout):
  """tanh and GELU on image kernels (Mehler's series on the Gram matrix of every (input,
  position), or per position behind a Flatten) against the same description traced, where
  every entry is a 2-D quadrature: NNGP and NTK, symmetric and cross."""
  size = 4 if readout == "flatten" else 3  # every pair of positions: (N·HW)² entries
  img = np.random.default_rng(14).normal(size=(3, size, size, 2)) + 0.3
  head = stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()
  net = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.2), stax.Tanh(),
                    stax.Conv(8, (2, 2), padding="CIRCULAR", W_std=1.4, weight_mean=True),
                    stax.Gelu(), head, stax.Dense(1, W_std=1.3))
  k = net.kernel_fn(img)
  cross = net.kernel_fn(img[:2], img[1:])
  with jax.enable_x64(True):
    quad = jax.jit(lambda a: net.kernel_fn(a, None, ("nngp", "ntk")))(jnp.asarray(img))
    quad_cross = jax.jit(lambda a, b: net.kernel_fn(a, b, ("nngp", "ntk")))(
        jnp.asarray(img[:2]), jnp.asarray(img[1:]))
  for ours, ref in ((k.nngp, quad.nngp), (k.ntk, quad.ntk), (cross.ntk, quad_cross.ntk)):
    _close(ours, ref, 1e-9)
  assert not net.traceable()  # computed eagerly: the series is tabulated on the host


def test_a_flatten_readout_needs_only_same_position_covariances():
  """The route chosen from the readout: Flatten computes per-position covariances only, and
  gives the kernel that every pair of positions gives (the same description with its full
  covariances forced by a parallel GlobalAvgPool branch that adds nothing)."""
  img = np.random.default_rng(13).normal(size=(5, 6, 6, 3))
  body = [stax.Conv(16, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(),
          stax.Conv(16, (3, 3), padding="CIRCULAR", W_std=1.5), stax.Erf()]
  flat = stax.serial(*body, stax.Flatten(), stax.Dense(1, W_std=1.2))
  forced = stax.serial(*body, stax.FanOut(2), stax.parallel(
      stax.serial(stax.Flatten(), stax.Dense(1, W_std=1.2)),
      stax.serial(stax.GlobalAvgPool(), stax.Dense(1, W_std=0.0))), stax.FanInSum())
  assert not flat.needs_full_spatial(True) and forced.needs_full_spatial(True)
  # the units after Flatten are positions × channels (Lemma 1's n for a weight-mean Dense)
  assert stax.serial(*body, stax.Flatten()).kernel_fn(img).width == 6 * 6 * 16
  a, b = flat.kernel_fn(img), forced.kernel_fn(img)
  _close(a.nngp, b.nngp, 1e-13)
  _close(a.ntk, b.ntk, 1e-13)
