"""What a new user broke at the command line (issue 20, items 8, 9, 13): each through the
command line in a subprocess, as the user ran it. Errors are one line on stderr with exit 2."""
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

ENV = dict(os.environ, PYTHONPATH=REPO)


def _run(*argv, cwd=None):
  return subprocess.run([sys.executable, "-m", "mimictheory.cli", *argv], capture_output=True,
                        text=True, env=ENV, cwd=cwd or REPO, timeout=600)


def _one_line_exit_2(proc, needle):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "Traceback" not in proc.stderr and needle in lines[0], lines[0]


def _cifar_folder(tmp_path, write):
  folder = tmp_path / "cifar-100-python"
  folder.mkdir()
  for name in ("train", "test"):
    write(folder / name)
  return folder


@pytest.mark.parametrize("content,needle", [
    (lambda p: p.write_bytes(b""), "EOFError"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)), "python-pickle format"),
    (lambda p: p.write_bytes(pickle.dumps({b"labels": [1]})), "needs the keys 'data'"),
], ids=["empty", "random-bytes", "no-data-key"])
def test_corrupt_cifar_files(tmp_path, content, needle):
  folder = _cifar_folder(tmp_path, content)
  proc = _run("train", "--data", "cifar100", "--data-path", str(folder), "--out",
              str(tmp_path / "run"), "--epochs", "1", "--quiet")
  _one_line_exit_2(proc, needle)
  assert "train" in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("arrays,needle", [
    (dict(x_train=np.zeros((5, 4))), "no y_train"),
    (None, "not a NumPy .npz archive"),
    (dict(x_train=np.ones(50), y_train=np.zeros(50)), "must hold x_train of shape (N, ...)"),
    (dict(x_train=np.ones((50, 4)), y_train=np.zeros(50)), "must vary"),
], ids=["no-y", "random-bytes", "one-dimensional", "constant"])
def test_corrupt_mnist_files(tmp_path, arrays, needle):
  path = tmp_path / "mnist.npz"
  if arrays is None:
    path.write_bytes(np.random.default_rng(0).bytes(3000))
  else:
    np.savez(path, **arrays)
  proc = _run("figures", "--only", "fig2", "--mnist", str(path), "--out", str(tmp_path / "f"))
  _one_line_exit_2(proc, needle)
  assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("argv,needle", [
    (["phase", "--norm", ""], "--norm must name at least one"),
    (["ablation", "lr-sweep", "--lrs", ""], "--lrs must list at least one"),
    (["train", "--data", "digits", "--data-path", "/nonexistent"], "data_path applies to cifar"),
    (["maps", "--norm", "none", "--fan-in", "10"], "--fan-in applies to --norm weight_mean"),
    (["train", "--milestones", "5,3"], "milestones must be strictly increasing"),
    (["phase", "--sw2", "1,2", "--sb2", "0", "--out", ""], "--out must name a folder"),
    (["train", "--epochs", "1", "--out", ""], "--out must name a folder"),
    (["phase", "--sw2", "1,2", "--sb2", "0", "--out", "/proc"], "--out '/proc' is not writable"),
    (["maps", "--norm", "none", "--batch", "8"], "--batch applies to --norm batch_norm"),
    (["reproduce", "table2", "--lrs", "-1"], "lr must be > 0"),
])
def test_small_ones_refused_before_any_work(tmp_path, argv, needle):
  proc = _run(*[a if a != "OUT" else str(tmp_path / "o") for a in argv], cwd=tmp_path)
  _one_line_exit_2(proc, needle)
  assert list(tmp_path.iterdir()) == []  # nothing written, not even into the current folder
  assert "reproduce" not in argv or "it/s" not in proc.stderr  # no progress bar first


def test_maps_batch_norm_says_it_is_the_full_batch_limit():
  proc = _run("maps", "--norm", "batch_norm", "--batch", "8")
  assert proc.returncode == 0, proc.stderr
  assert "full-batch limit (B -> infinity)" in proc.stdout
  assert "at batch 8 the exact chi1 = " in proc.stdout


def test_sigterm_during_figures_is_an_interrupt_and_stale_temporaries_go(tmp_path):
  """SIGTERM exits 143 with one line and no temporary; a temporary of our naming left by a
  killed process (SIGKILL) is removed by the next run into the folder."""
  stale = tmp_path / ".fig4.png.0123456789ab.tmp.png"
  stale.write_bytes(b"")
  os.utime(stale, (time.time() - 3600, time.time() - 3600))
  other = tmp_path / "notes.tmp.txt"  # not ours: kept
  other.write_text("mine")
  proc = subprocess.Popen([sys.executable, "-m", "mimictheory.cli", "figures", "--only",
                           "fig4", "--out", str(tmp_path), "--quiet"], env=ENV, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while stale.exists() and time.time() < deadline:
    time.sleep(0.05)
  assert not stale.exists() and other.exists()
  time.sleep(1.0)  # into the computation
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (0, 143), err
  assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name and p != other]
  if proc.returncode == 143:
    assert err.strip().splitlines() == [
        "mimictheory: terminated; every file written so far is complete"]


def test_activation_that_jax_cannot_trace_is_named():
  import mimictheory as mt
  with pytest.raises(TypeError, match=r"activation 'tanh' must be an elementwise function of "
                     r"a JAX array.*TracerArrayConversionError"):
    mt.chi1(np.tanh, 1.5, 0.1)
  with pytest.raises(TypeError, match=r"activation '<lambda>' must be an elementwise"):
    mt.kernels(np.eye(3), activation=lambda u: u if u > 0 else 0 * u)


def test_work_that_cannot_fit_is_refused_before_it_starts(tmp_path):
  """Estimated from the sizes, before anything is built (the depth-100000 run was killed by
  the OOM killer after 7 minutes, without a word)."""
  import mimictheory as mt
  t0 = time.time()
  proc = _run("train", "--depth", "100000", "--width", "100000", "--epochs", "1", "--out",
              str(tmp_path / "run"))
  _one_line_exit_2(proc, "train would need about 12 PB (1e+15 float32 parameters")
  assert not (tmp_path / "run").exists() and time.time() - t0 < 60
  with pytest.raises(ValueError, match=r"kernels would need about 23 TB \(600000 x 600000"):
    mt.kernels(np.zeros((600000, 3)))
  with pytest.raises(ValueError, match=r"layer_kernels would need .*208 float64 arrays.*depth"):
    mt.layer_kernels(np.zeros((5000, 3)), depth=100)
  with pytest.raises(ValueError, match=r"phase_diagram would need about 1.92 TB \(100000 x"):
    mt.phase_diagram(sw2=np.linspace(1, 2, 100000), sb2=np.linspace(0, 1, 100000))
