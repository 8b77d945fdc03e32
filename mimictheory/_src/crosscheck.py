"""Cross-check against neural-tangents, the field's reference library, run live in a subprocess.

neural-tangents 0.6.5 needs JAX <= 0.5.3, so it lives in its own environment (`make nt-env`
creates `.nt-env`); `nt_reference.py` runs there on a request written by this module, and the
two sets of Gram matrices are compared here, entry by entry, in float64:

* analytic NNGP and NTK for ReLU, leaky ReLU and erf (closed forms on both sides), GELU
  (mimictheory's quadrature against neural-tangents' closed form) and tanh
  (quadrature on both sides: neural-tangents' Gauss–Hermite rule is the less accurate one, so
  the tolerance is looser and says so), at several depths and (σw², σb²);
* the empirical NTK of random networks with the same parameters (mimictheory's layer-by-layer
  formula against neural-tangents' Jacobian contraction).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from mimictheory._src import checks
from mimictheory._src.finite import finite_network
from mimictheory._src.io import progress_bar, write_table
from mimictheory._src.kernels import kernels
from mimictheory._src.nt_reference import timed
from mimictheory._src.precision import to_numpy

__all__ = ["CrossCheck", "Comparison", "crosscheck", "check_activations", "reference_python",
           "write_report", "ReferenceUnavailable"]

SCRIPT = Path(__file__).with_name("nt_reference.py")
ENV_VAR = "MIMICTHEORY_NT_PYTHON"
ANALYTIC_TOL = 1e-10  # both sides exact to rounding (closed forms, or our quadrature)
NT_QUADRATURE_TOL = 1e-6  # neural-tangents' own Gauss–Hermite quadrature (tanh)
EMPIRICAL_TOL = 1e-10
NT_NUMERICAL = ("tanh", "swish", "softplus")  # activations neural-tangents integrates numerically
# neural-tangents' ABReLU (ReLU, leaky ReLU) takes the angle at ρ = 1 as
# arctan2(√(q1q2 - q12²), q12), so a one-ulp rounding of q12 becomes a ~1e-8 angle on the Gram
# diagonal (mimictheory pins ρ = 1 there); its NTK diagonal is good to ~3e-9 per layer only.
NT_DIAGONAL_TOL = {"relu": 1e-7, "leaky_relu": 1e-7}

DEFAULT_ACTIVATIONS = ("relu", "erf", "gelu", "leaky_relu", "tanh")
DEFAULT_DEPTHS = (1, 3, 10)
DEFAULT_INITS = ((2.0, 0.0), (1.5, 0.2), (0.8, 0.5))


class ReferenceUnavailable(RuntimeError):
  """The neural-tangents reference environment is missing or broken."""


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One quantity computed by both libraries: the largest absolute and relative differences."""

  quantity: str  # "nngp", "ntk", "empirical ntk", "conv ...", "predict ..."
  activation: str
  depth: int
  sw2: float
  sb2: float
  width: int | None
  max_abs: float
  max_rel: float  # max |a - b| / max |b|, off the diagonal
  max_rel_diagonal: float  # the same on the diagonal (every input with itself)
  tolerance: float
  diagonal_tolerance: float
  seconds_ours: float = float("nan")
  seconds_nt: float = float("nan")

  @property
  def ok(self) -> bool:
    return bool(self.max_rel <= self.tolerance and
                self.max_rel_diagonal <= self.diagonal_tolerance)


@dataclasses.dataclass(frozen=True)
class CrossCheck:
  comparisons: tuple[Comparison, ...]
  versions: dict

  @property
  def ok(self) -> bool:
    return all(c.ok for c in self.comparisons)

  def failures(self) -> list[Comparison]:
    return [c for c in self.comparisons if not c.ok]


def reference_python(path=None) -> Path:
  """The reference environment's Python: `path`, $MIMICTHEORY_NT_PYTHON, or ./.nt-env."""
  if path is not None:
    if Path(path).is_file() and os.access(path, os.X_OK):
      return Path(path)
    raise ReferenceUnavailable(f"--nt-python {str(path)!r} is not an executable file")
  candidates = [os.environ.get(ENV_VAR), Path.cwd() / ".nt-env" / "bin" / "python",
                Path(__file__).resolve().parents[2] / ".nt-env" / "bin" / "python"]
  for candidate in candidates:
    if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
      return Path(candidate)
  raise ReferenceUnavailable(
      "the neural-tangents reference environment was not found: run `make nt-env` (it creates "
      f".nt-env) or pass --nt-python / set {ENV_VAR}")


def _run_reference(python: Path, request: dict, timeout: float) -> dict:
  with tempfile.TemporaryDirectory(prefix="mimictheory-nt-") as tmp:
    req, res = Path(tmp) / "request.npz", Path(tmp) / "result.npz"
    np.savez(req, **request)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([str(python), str(SCRIPT), str(req), str(res)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not res.exists():
      lines = [
        l
        for l in proc.stderr.strip().splitlines()
        if l.strip() and not l.startswith(("For simplicity", "----"))
      ]
      last = (lines or ["(no output)"])[-1]
      raise ReferenceUnavailable(f"the neural-tangents reference failed: {last}")
    with np.load(res) as data:
      return {k: data[k] for k in data.files}


def _diff(ours, ref):
  """(max |a - b|, max off-diagonal |a - b| / max |b|, the same on the diagonal)."""
  ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
  if ours.shape != ref.shape or not np.isfinite(ours).all() or not np.isfinite(ref).all():
    return np.inf, np.inf, np.inf
  err = np.abs(ours - ref)
  scale = max(float(np.max(np.abs(ref))), np.finfo(float).tiny)
  diagonal = np.eye(*err.shape, dtype=bool)
  return float(err.max()), float(err[~diagonal].max()) / scale, float(err[diagonal].max()) / scale


def _diff_any(ours, ref):
  """`_diff` for any shape: (max |a − b|, and max |a − b| / max |b| twice, with no diagonal)."""
  ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
  if ours.shape != ref.shape or not np.isfinite(ours).all() or not np.isfinite(ref).all():
    return np.inf, np.inf, np.inf
  err = float(np.max(np.abs(ours - ref)))
  rel = err / max(float(np.max(np.abs(ref))), np.finfo(float).tiny)
  return err, rel, rel


def _predict_all(d):
  """mimictheory.predict on the split kernels of `d` (the request's predict_* arrays): the
  quantities neural-tangents' reference computes, and the seconds they took."""
  import collections
  import time

  from mimictheory._src import predict
  n = d["n_train"]
  pair = collections.namedtuple("K", ["nngp", "ntk"])
  block = lambda rows, cols: pair(d["nngp"][rows, cols], d["ntk"][rows, cols])  # noqa: E731
  train, test = slice(0, n), slice(n, None)
  start = time.perf_counter()
  fn = predict.gradient_descent_mse(d["ntk"][train, train], d["y"],
                                    learning_rate=d["learning_rate"], diag_reg=d["diag_reg"])
  out = {}
  out["train"], out["test"] = fn(d["times"], d["f0"], d["ft0"], d["ntk"][test, train])
  lanczos = predict.gradient_descent_mse(d["ntk"][train, train], d["y"], method="krylov",
                                         learning_rate=d["learning_rate"],
                                         diag_reg=d["diag_reg"])
  out["train (Lanczos)"], out["test (Lanczos)"] = lanczos(d["times"], d["f0"], d["ft0"],
                                                          d["ntk"][test, train])
  gp = predict.gp_inference(block(train, train), d["y"])(None, block(test, train),
                                                         block(test, test))
  for g in ("nngp", "ntk"):
    out[f"gp_{g}_mean"], out[f"gp_{g}_cov"] = getattr(gp, g)
  out["max_learning_rate"] = np.array(predict.max_learning_rate(d["ntk"][train, train]))
  return out, time.perf_counter() - start


def check_activations(activations) -> tuple[str, ...]:
  """The activations both libraries know (neural-tangents' names differ for the others)."""
  from mimictheory._src.activations import ACTIVATIONS
  allowed = tuple(a for a in ACTIVATIONS if a in ("relu", "erf", "identity", "gelu",
                                                   "leaky_relu", "tanh", "swish", "softplus"))
  if isinstance(activations, str):
    activations = (activations,)
  return tuple(checks.check_choice("activation", a, allowed) for a in activations)


CONV_ACTIVATIONS = ("relu", "erf")  # closed forms on both sides for image kernels (so far)
CONV_READOUTS = ("flatten", "pool", "avgpool")
CONV_IMAGE = (6, 6, 3)  # H, W, C of the random images


def _conv_description(activation, depth, sw2, sb2, filter, padding, readout):
  """nt_reference.conv_network written with mimictheory's stax (the same source)."""
  from mimictheory._src import stax
  conv = lambda: stax.Conv(1, (filter, filter), padding=padding, W_std=sw2**0.5,  # noqa: E731
                           b_std=sb2**0.5)
  head = {"flatten": stax.Flatten(), "pool": stax.GlobalAvgPool(),
          "avgpool": stax.serial(stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten())}[readout]
  return stax.serial(*[conv(), stax.Elementwise(activation)] * depth, head,
                     stax.Dense(1, W_std=sw2**0.5, b_std=sb2**0.5))


def crosscheck(activations=DEFAULT_ACTIVATIONS, depths=DEFAULT_DEPTHS, inits=DEFAULT_INITS,
               n_inputs: int = 16, dim: int = 8, width: int = 256, seed: int = 0,
               nt_python=None, repeat: int = 0, empirical: bool = True,
               timeout: float = 1200.0, progress: bool = False,
               convolutions: bool = True, n_images: int = 16,
               image_shape: tuple = CONV_IMAGE, readouts=CONV_READOUTS,
               dynamics: bool = True) -> CrossCheck:
  """Compute the kernels with mimictheory and neural-tangents and compare them.

  Args:
    activations, depths, inits: the analytic cases, every combination of activation, depth and
      (σw², σb²) in `inits`.
    n_inputs, dim: the random inputs (standard normal, seeded).
    width: width of the random networks whose empirical NTK is compared (ReLU and erf, depth 3).
    nt_python: the reference environment's Python (default: see `reference_python`).
    repeat: time each computation this many times after compiling (0: no timing).
    empirical: also compare the empirical NTK of random networks.
    convolutions: also compare convolutional kernels on `n_images` random images of
      `image_shape` (H, W, C): for each of `activations` among CONV_ACTIVATIONS, the deepest
      of `depths` 3 × 3 SAME convolutions with the first of `inits`, behind each of
      `readouts`: "flatten" (a Flatten), "pool" (a GlobalAvgPool), "avgpool" (a 2 × 2
      AvgPool of stride 2 and a Flatten).
    dynamics: also compare `mimictheory.predict` with neural-tangents' `predict` on the first
      case's kernels (the first 3/4 of the inputs as the training set, the rest as the test
      set, targets sin of the first feature): outputs under gradient descent at several
      times, GP inference with the NNGP and the NTK (means and covariances) and the
      learning-rate limit.

  Raises `ReferenceUnavailable` if the reference environment is missing or fails.
  """
  activations = check_activations(activations)
  python = reference_python(nt_python)
  n_inputs = checks.check_int("n_inputs", n_inputs, minimum=2)
  width = checks.check_int("width", width, minimum=2)
  x = np.random.default_rng(seed).normal(size=(n_inputs, checks.check_int("dim", dim)))
  cases = [dict(activation=a, depth=int(d), sw2=float(w), sb2=float(b))
           for a in activations for d in depths for (w, b) in inits]
  nets = [finite_network(a, depth=3, width=width, sw2=2.0 if a == "relu" else 1.5, sb2=0.1)
          for a in ("relu", "erf")] if empirical else []
  request = dict(x=x, cases=json.dumps(cases), repeat=repeat,
                 networks=json.dumps([dict(activation=n.activation.name, depth=n.depth,
                                           width=n.width, sw2=n.sw2, sb2=n.sb2) for n in nets]))
  conv_cases = [dict(activation=a, depth=int(max(depths)), sw2=float(inits[0][0]),
                     sb2=float(inits[0][1]), filter=3, padding="SAME", readout=r)
                for a in activations if a in CONV_ACTIVATIONS
                for r in (checks.check_choice("readout", r, CONV_READOUTS) for r in readouts)
                ] if convolutions else []
  dyn = None
  if dynamics and cases:
    k0 = kernels(x, depth=cases[0]["depth"], activation=cases[0]["activation"],
                 sw2=cases[0]["sw2"], sb2=cases[0]["sb2"])
    n_train = max(2, 3 * len(x) // 4)
    rng = np.random.default_rng(seed + 2)
    dyn = dict(nngp=np.asarray(k0.nngp), ntk=np.asarray(k0.ntk), n_train=n_train,
               y=np.sin(x[:n_train, :1]), f0=rng.normal(size=(n_train, 1)),
               ft0=rng.normal(size=(len(x) - n_train, 1)), times=np.array([0.5, 5.0, 500.0]),
               learning_rate=0.9, diag_reg=1e-4)
    request.update({f"predict_{k}": v for k, v in dyn.items()})
  n_images = checks.check_int("n_images", n_images, minimum=2)
  images = np.random.default_rng(seed + 1).normal(size=(n_images, *image_shape))
  if conv_cases:
    request.update(images=images, conv_cases=json.dumps(conv_cases))
  ours_entk, params_all = [], []
  with jax.enable_x64(True):
    for i, net in enumerate(nets):
      params = net.init(jax.random.key(seed + i), dim)
      for name, value in dataclasses.asdict(params).items():
        request[f"net{i}_{name}"] = np.asarray(value)
      params_all.append(params)
    ntk_fn = jax.jit(lambda net, p, x: net.ntk(p, x), static_argnums=0)
    for net, params in zip(nets, params_all):
      ours_entk.append(to_numpy(timed(lambda: ntk_fn(net, params, x), repeat)))
  reference = _run_reference(python, request, timeout)

  rows = []
  for i, case in enumerate(progress_bar(cases, progress, "kernels")):
    ours, seconds = timed(lambda: kernels(x, depth=case["depth"], activation=case["activation"],
                                           sw2=case["sw2"], sb2=case["sb2"]), repeat)
    tol = NT_QUADRATURE_TOL if case["activation"] in NT_NUMERICAL else ANALYTIC_TOL
    diag_tol = max(tol, NT_DIAGONAL_TOL.get(case["activation"], tol))
    for quantity in ("nngp", "ntk"):
      rows.append(Comparison(quantity, case["activation"], case["depth"], case["sw2"],
                             case["sb2"], None, *_diff(getattr(ours, quantity),
                                                       reference[f"{quantity}{i}"]), tol,
                             diag_tol, seconds, float(reference[f"time_kernels{i}"])))
  for i, case in enumerate(conv_cases):
    net = _conv_description(**case)
    ours, seconds = timed(lambda: net.kernel_fn(images, None, ("nngp", "ntk")), repeat)
    diag_tol = max(ANALYTIC_TOL, NT_DIAGONAL_TOL.get(case["activation"], ANALYTIC_TOL))
    for quantity in ("nngp", "ntk"):
      rows.append(Comparison(f"conv {case['readout']} {quantity}", case["activation"],
                             case["depth"], case["sw2"], case["sb2"], None,
                             *_diff(getattr(ours, quantity), reference[f"conv_{quantity}{i}"]),
                             ANALYTIC_TOL, diag_tol, seconds,
                             float(reference[f"time_conv{i}"])))
  if dyn is not None:
    case = cases[0]
    ours, seconds = _predict_all(dyn)
    for name, value in ours.items():
      rows.append(Comparison(f"predict {name}", case["activation"], case["depth"], case["sw2"],
                             case["sb2"], None, *_diff_any(
                                 value, reference[f"predict_{name.split(' ')[0]}"]),
                             ANALYTIC_TOL, ANALYTIC_TOL, seconds,
                             float(reference["time_predict"])))
  for i, (net, (theta, seconds)) in enumerate(zip(nets, ours_entk)):
    nt_seconds = [float(reference[k]) for k in reference if k.startswith(f"time_entk{i}_impl")]
    rows.append(
      Comparison(
        "empirical ntk",
        net.activation.name,
        net.depth,
        net.sw2,
        net.sb2,
        net.width,
        *_diff(theta, reference[f"entk{i}"]),
        EMPIRICAL_TOL,
        EMPIRICAL_TOL,
        seconds,
        float(np.nanmin(nt_seconds)) if repeat > 0 else np.nan,
      )
    )
  versions = dict(jax=jax.__version__, reference_jax=str(reference["jax_version"]),
                  neural_tangents=str(reference["nt_version"]), python=sys.version.split()[0])
  return CrossCheck(tuple(rows), versions)


def _markdown(result: CrossCheck) -> str:
  lines = [
      "# mimictheory against neural-tangents",
      "",
      f"mimictheory on JAX {result.versions['jax']}; neural-tangents "
      f"{result.versions['neural_tangents']} on JAX {result.versions['reference_jax']} "
      "(separate environment). Float64 throughout. rel = max|ours − nt| / max|nt| over the "
      "off-diagonal entries, diag rel the same over the diagonal (an input with itself).",
      "",
      "| quantity | activation | depth | σw² | σb² | width | max abs diff | rel | diag rel | "
      "tolerance | ok |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in result.comparisons:
    tol = (f"{c.tolerance:.0e}" if c.diagonal_tolerance == c.tolerance
           else f"{c.tolerance:.0e} (diag {c.diagonal_tolerance:.0e})")
    lines.append(f"| {c.quantity} | {c.activation} | {c.depth} | {c.sw2:g} | {c.sb2:g} | "
                 f"{c.width or '∞'} | {c.max_abs:.1e} | {c.max_rel:.1e} | "
                 f"{c.max_rel_diagonal:.1e} | {tol} | {'yes' if c.ok else '**NO**'} |")
  lines += [
    "",
    f"{sum(c.ok for c in result.comparisons)} of {len(result.comparisons)} agree.",
    "tanh: neural-tangents integrates it by Gauss–Hermite quadrature (degree 200), "
    "whose error sets the looser tolerance; GELU compares mimictheory's quadrature with "
    "neural-tangents' closed form; ReLU, leaky ReLU and erf are closed forms on both "
    "sides.",
    "predict: `mimictheory.predict` and neural-tangents' `predict` on the same kernels (the "
    "first case's; 3/4 of the inputs train, the rest test): gradient descent on the MSE at "
    "t = 0.5, 5, 500 (learning rate 0.9, diag_reg 1e-4), GP inference with the NNGP and the "
    "NTK (means, covariances), and the learning-rate limit.",
    "conv: random images (16 of 6×6×3 by default), 3×3 SAME "
    "convolutions (`stax.Conv`), then `Flatten` (same-position covariances) or "
    "`GlobalAvgPool` (every pair of positions) or a 2 × 2 `AvgPool` of stride 2 and a "
    "`Flatten`, and a `Dense`.",
    "ReLU's and leaky ReLU's NTK diagonal: neural-tangents computes the angle at ρ = 1 as "
    "arctan2(√(q1q2 − q12²), q12), so a one-ulp rounding of q12 costs ~1e-8 in the "
    "angle and ~3e-9 per layer in the NTK; mimictheory pins ρ = 1 on the diagonal (its value "
    "matches the exact closed form, see tests/test_crosscheck.py).",
    "",
  ]
  return "\n".join(lines)


def write_report(result: CrossCheck, out) -> tuple[Path, Path]:
  """Write crosscheck.md and crosscheck.json into the folder `out` (atomically)."""
  payload = dict(ok=result.ok, versions=result.versions,
                 comparisons=[dict(dataclasses.asdict(c), ok=c.ok) for c in result.comparisons])
  md, js = write_table(out, "crosscheck", _markdown(result), payload)
  return md, js
