"""mimictheory against neural-tangents, live, in the reference environment (`make nt-env`).

`make test` sets MIMICTHEORY_REQUIRE_NT=1 (and creates the environment), so in CI a missing or
broken reference fails these tests instead of skipping them.
"""
import json

import numpy as np
import pytest

import mimictheory as mt
from mimictheory._src import crosscheck as cc
from mimictheory.cli import main


@pytest.mark.parametrize("activations, depths", [
    (("relu", "erf", "gelu"), (3,)),  # the default run: closed forms and one numerical
    pytest.param(("relu", "erf", "gelu", "leaky_relu", "tanh"), (2, 6), marks=pytest.mark.slow),
])
def test_kernels_and_empirical_ntk_agree_with_neural_tangents(nt_python, activations, depths):
  result = cc.crosscheck(activations=activations, depths=depths,
                         inits=((2.0, 0.0), (1.5, 0.2)), nt_python=nt_python,
                         n_inputs=10, width=128)
  assert result.versions["neural_tangents"] == "0.6.5"
  conv = [c for c in result.comparisons if c.quantity.startswith("conv")]
  convolved = [a for a in activations if a in cc.CONV_ACTIVATIONS]
  assert len(conv) == len(convolved) * len(cc.CONV_READOUTS) * 2  # nngp and ntk per readout
  dynamics = [c for c in result.comparisons if c.quantity.startswith("predict")]
  assert {c.quantity for c in dynamics} == {
      "predict train", "predict test", "predict gp_nngp_mean", "predict gp_nngp_cov",
      "predict gp_ntk_mean", "predict gp_ntk_cov", "predict max_learning_rate",
      "predict train (Lanczos)", "predict test (Lanczos)"}
  assert len(result.comparisons) == (len(activations) * len(depths) * 2 * 2 + 2 + len(conv)
                                     + len(dynamics))
  assert max(c.max_rel for c in dynamics) < 1e-10
  bad = [c for c in result.comparisons if not c.ok]
  assert not bad, bad
  closed_forms = [c for c in result.comparisons if c.activation not in cc.NT_NUMERICAL]
  assert max(c.max_rel for c in closed_forms) < 1e-10  # off the diagonal: rounding level
  assert max(c.max_rel for c in result.comparisons if c.quantity == "empirical ntk") < 1e-12


def test_the_comparison_sees_a_real_difference(nt_python):
  """A negative control: neural-tangents at σb² = 0.2 against mimictheory at σb² = 0.2001."""
  x = np.random.default_rng(1).normal(size=(6, 4))
  case = dict(activation="relu", depth=3, sw2=1.5, sb2=0.2)
  ref = cc._run_reference(nt_python, dict(x=x, cases=json.dumps([case]), networks="[]",
                                          repeat=0), timeout=300)
  ours = mt.kernels(x, depth=3, activation="relu", sw2=1.5, sb2=0.2001)
  _, rel, _ = cc._diff(ours.ntk, ref["ntk0"])
  assert rel > 1e-6
  _, rel, _ = cc._diff(mt.kernels(x, depth=3, activation="relu", sw2=1.5, sb2=0.2).ntk,
                       ref["ntk0"])
  assert rel < 1e-12


@pytest.mark.parametrize("activation,slope", [("relu", 0.0), ("leaky_relu", 0.01)])
def test_our_diagonal_is_the_exact_recursion(activation, slope):
  """Where neural-tangents' ReLU diagonal is off by ~1e-9, ours is the exact value.

  On the diagonal (ρ = 1) of a positively homogeneous φ = max(x, 0) + a min(x, 0):
  E[φ(u)²] = (1 + a²) q / 2 and E[φ'(u)²] = (1 + a²) / 2, so q and Θ follow by hand.
  """
  x = np.random.default_rng(2).normal(size=(5, 3))
  sw2, sb2, depth = 1.7, 0.3, 10
  q = sw2 * np.sum(x * x, axis=1) / 3 + sb2
  theta = q.copy()
  half = (1 + slope**2) / 2
  for _ in range(depth):
    q = sw2 * half * q + sb2
    theta = q + sw2 * half * theta
  k = mt.kernels(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2)
  np.testing.assert_allclose(np.diag(k.nngp), q, rtol=1e-13)  # both closed forms
  np.testing.assert_allclose(np.diag(k.ntk), theta, rtol=1e-13)


@pytest.mark.slow
def test_cli_writes_markdown_and_json(nt_python, tmp_path, capsys):
  out = tmp_path / "cc"
  rc = main(["crosscheck", "--activations", "relu,gelu", "--depths", "3", "--width", "64",
             "--inputs", "6", "--out", str(out), "--nt-python", str(nt_python), "--quiet"])
  assert rc == 0, capsys.readouterr().err
  assert sorted(p.name for p in out.iterdir()) == ["crosscheck.json", "crosscheck.md"]
  report = json.loads((out / "crosscheck.json").read_text())
  conv = len(cc.CONV_READOUTS) * 2  # relu's convolutions: nngp and ntk per readout
  dynamics = 9  # predict: train, test (both routes), GP NNGP and NTK means and covariances, lr
  assert report["ok"] is True and len(report["comparisons"]) == 2 * 3 * 2 + 2 + conv + dynamics
  assert "| empirical ntk | relu |" in (out / "crosscheck.md").read_text()


@pytest.mark.parametrize("argv,needle", [
    (["crosscheck", "--nt-python", "/nonexistent/python"], "--nt-python"),
    (["crosscheck", "--activations", "softsign"], "activation must be one of"),
    (["crosscheck", "--depths", "0"], "--depths"),
])
def test_cli_bad_options(argv, needle, tmp_path, capsys):
  out = tmp_path / "never"
  assert main(argv + ["--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert needle in err and len(err.strip().splitlines()) == 1
  assert not out.exists()
