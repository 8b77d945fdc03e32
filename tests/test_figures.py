"""The figures' data at reduced size, checked against the theory they illustrate."""
import gzip

import numpy as np
import pytest

import mimictheory as mt
from mimictheory._src import figure_data, figures
from mimictheory._src.data import digits, mnist


@pytest.fixture(scope="module")
def x():
  return digits()[0][:300]


def test_figure2_units_drift_apart_with_depth(x):
  data = figure_data.unit_boxes("none", x, depth=51, layers=(20, 50), units=30, width=128)
  ratio = data["spread_ratio"]
  assert data["layer20"].shape == (300, 30) and data["layer50"].shape == (300, 30)
  # each unit concentrates while the units drift apart: the ratio grows with depth
  assert ratio[0] < ratio[19] < ratio[49]
  assert ratio[49] > 2.0


def test_figure3_weight_mean_keeps_units_alike(x):
  # (BN's panel is alike by definition: every unit has batch mean 0 and variance 1.)
  wm = figure_data.unit_boxes("weight_mean", x, depth=51, layers=(50,), width=128)
  plain = figure_data.unit_boxes("none", x, depth=51, layers=(50,), width=128)
  assert wm["spread_ratio"][49] < 0.3 < 2.0 < plain["spread_ratio"][49]
  assert wm["sw2"] == pytest.approx(float(mt.stable_sw2("relu", fan_in=128)))


@pytest.mark.slow
def test_supplementary_correlations(x):
  plain = figure_data.pair_correlations("none", x, pairs=60, depth=40, width=256)
  wm = figure_data.pair_correlations("weight_mean", x, pairs=60, depth=40, width=256)
  bn = figure_data.pair_correlations("batch_norm", x, pairs=60, depth=20, width=256)
  # supplementary Figure 1: the straight network drives every pair towards 1 (theory and net)
  assert np.median(plain["finite"][-1]) > 0.9 and np.median(plain["theory"][-1]) > 0.9
  assert np.all(np.diff(np.median(plain["theory"], axis=1)) > 0)
  # supplementary Figure 2: with weight mean or BN they stay near 0 (T̄'s and BN's c* = 0)
  for data in (wm, bn):
    assert np.percentile(np.abs(data["finite"][-1]), 90) < 0.3
    assert np.percentile(np.abs(data["theory"][-1]), 90) < 0.1
  # the finite network follows the theory within its O(n^-1/2) fluctuations
  assert np.sqrt(np.mean((wm["finite"] - wm["theory"])**2)) < 0.15


@pytest.mark.slow
def test_figure5_residual_branch_suppression():
  bn = mt.residual_variances("batch_norm", depth=30, width=128, batch=128, draws=4)
  mimic = mt.residual_variances("mimic", depth=30, width=128, batch=128, draws=4)
  l = bn.blocks
  # against the infinite-width residual theory (residual_kernels): stream l, branch 1 with BN
  theory = figure_data.residual_theory("batch_norm", "one", depth=30, width=128)
  np.testing.assert_allclose(theory.stream, l, rtol=1e-12)
  np.testing.assert_allclose(theory.branch, 1.0, rtol=1e-12)
  z = (bn.branch.mean - theory.branch) / bn.branch.se
  assert np.abs(z).max() < 4.5, z
  np.testing.assert_allclose(bn.stream.mean, theory.stream, rtol=0.1)
  np.testing.assert_allclose(bn.ratio * l, 1.0, rtol=0.1)  # the 1/l suppression
  # official scalar 1.2/l on a weight-mean He branch: Var(branch)/Var(stream) =
  # 1.2² · 2 (1 - 1/n) Var(relu(z)) / l² = 1.44 (1 - 1/n)(1 - 1/π) / l²
  expected = 1.44 * (1 - 1 / 128) * (1 - 1 / np.pi) / l**2
  np.testing.assert_allclose(mimic.ratio[1:], expected[1:], rtol=0.1)


@pytest.mark.slow
def test_ntk_condition_number_by_phase(tmp_path):
  paths = figures.ntk_condition(tmp_path, depth=40, n_inputs=16)
  data = np.load(tmp_path / "ntk_condition.npz")
  labels = [str(data[f"label{i}"]) for i in range(len(figure_data.ntk_condition_points()))]
  cond = {label.split(" (")[0]: data[f"condition{i}"] for i, label in enumerate(labels)}
  assert cond["erf ordered"][-1] > 1e6 * cond["erf ordered"][0]  # diverges (Theorem 1)
  assert cond["erf chaotic"][-1] < 1.5  # tends to 1: c* = 0
  assert cond["ReLU weight mean"][-1] < 5  # bounded: the chaotic phase (Theorem 3)
  assert 2 < cond["erf critical"][-1] < 100  # neither
  assert {p.suffix for p in paths} == {".png", ".pdf", ".npz"}


def test_figure4_fixed_points(tmp_path):
  figures.figure4(tmp_path)
  data = np.load(tmp_path / "fig4.npz")
  assert list(data["T_fixed_points"]) == [1.0]
  np.testing.assert_allclose(sorted(data["Tbar_fixed_points"]), [0.0, 1.0], atol=1e-12)
  assert list(data["Tbar_stable"][np.argsort(data["Tbar_fixed_points"])]) == [True, False]


@pytest.mark.slow
def test_same_seed_same_data_and_no_temp_files(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for out in (a, b):
    out.mkdir()
    figures.regenerate(out, only=["supp1", "fig4"])
  for name in ("supp1.npz", "fig4.npz", "fig4.pdf"):
    assert (a / name).read_bytes() == (b / name).read_bytes()
  assert sorted(p.name for p in a.iterdir()) == sorted(
      f"{s}.{e}" for s in ("supp1", "fig4") for e in ("png", "pdf", "npz"))


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as fh:
    fh.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_copy_is_used(tmp_path):
  rng = np.random.default_rng(0)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)))
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 40))
  xm, y = mnist(tmp_path)
  assert xm.shape == (40, 784) and y.shape == (40,)
  out = tmp_path / "figs"
  out.mkdir()
  figures.regenerate(out, only=["supp1"], mnist=tmp_path)
  assert np.load(out / "supp1.npz")["finite"].shape == (50, 20)  # 20 pairs from 40 images


def test_mnist_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="mnist"):
    mnist(tmp_path / "missing")
  (tmp_path / "train-images-idx3-ubyte").write_bytes(b"garbage!")
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"garbage!")
  with pytest.raises(ValueError, match="IDX"):
    mnist(tmp_path)


@pytest.mark.slow
def test_supplementary3_last_bn_variance_surges_and_training_stays_finite(tmp_path):
  for norm in ("last_bn", "mimic"):
    data = figure_data.last_bn_variance(norm, lr=0.1, epochs=1, depth=16, width=128,
                                    workdir=tmp_path)
    assert data["status"] == "finished" and np.all(np.isfinite(data["loss"]))
    assert data["variance"].shape == (len(data["steps"]), 10)  # per class, per step
    assert data["variance"][-1].max() > 10 * data["variance"][0].max()  # it surges
