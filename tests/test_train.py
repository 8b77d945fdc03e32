"""Training: a MimicNorm MLP learns the digits; resume after a kill is exact; divergence is
recorded; bad configurations are refused."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from mimictheory._src.train import TrainConfig, digits_split, synthetic_data, train

SMALL = dict(depth=4, width=128, batch_size=64, warmup_epochs=1, milestones=(3,))


def _leaves(model):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(nnx.state(model))]


def test_mimicnorm_mlp_learns_digits(tmp_path):
  result = train(TrainConfig(norm="mimic", epochs=3, **SMALL), digits_split(), tmp_path)
  assert result.status == "finished"
  # chance is 10%; three epochs of MimicNorm reach well above 85% on held-out digits
  assert result.history[-1]["test_accuracy"] > 0.85
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
  assert len(json.loads(lines[-1])["last_bn_variance"]) == 10  # logged per class


def test_resume_after_kill_is_bit_for_bit(tmp_path):
  cfg = TrainConfig(norm="mimic", epochs=6, **SMALL)
  data = synthetic_data(n=2048, d=32, classes=4)
  straight = train(cfg, data, tmp_path / "straight")
  out = tmp_path / "killed"
  script = ("import sys; sys.path.insert(0, %r)\n"
            "from mimictheory._src.train import TrainConfig, synthetic_data, train\n"
            "train(TrainConfig(**%r), synthetic_data(n=2048, d=32, classes=4), %r)\n"
            % (REPO, dict(norm="mimic", epochs=6, **SMALL), str(out)))
  proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (out / "checkpoints" / "2").exists() and time.time() < deadline:
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (out / "checkpoints" / "2").exists()
  resumed = train(cfg, data, out)
  assert resumed.status == "finished" and len(resumed.history) == 6
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(straight.model),
                                                  _leaves(resumed.model)))
  assert resumed.history == straight.history


def test_divergence_is_recorded_not_crashed(tmp_path):
  cfg = TrainConfig(norm="none", epochs=5, lr=1e4, depth=4, width=64, batch_size=64,
                    warmup_epochs=0, milestones=())
  result = train(cfg, synthetic_data(), tmp_path)
  assert result.status == "diverged"
  assert result.history[-1]["diverged"] is True
  assert len(result.history) < 5


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="group"), "norm"), (dict(lr=0.0), "lr"), (dict(momentum=1.5), "momentum"),
    (dict(epochs=0), "epochs"), (dict(batch_size=10_000), "batch_size")])
def test_bad_config(kwargs, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train(TrainConfig(**kwargs), synthetic_data(), tmp_path)


def test_other_config_in_same_folder_is_refused(tmp_path):
  train(TrainConfig(epochs=1, **SMALL), synthetic_data(), tmp_path)
  with pytest.raises(ValueError, match="another configuration"):
    train(TrainConfig(epochs=2, **SMALL), synthetic_data(), tmp_path)


def test_cli_train_writes_metrics_and_plot(tmp_path, capsys):
  from mimictheory.cli import main
  out = tmp_path / "run"
  argv = ["train", "--data", "synthetic", "--epochs", "2", "--depth", "3", "--width", "64",
          "--batch-size", "64", "--milestones", "1", "--out", str(out), "--quiet"]
  assert main(argv) == 0
  assert {"metrics.jsonl", "config.json", "curves.png", "checkpoints"} <= {
      p.name for p in out.iterdir()}
  assert "finished: 2 epochs" in capsys.readouterr().out
  assert main(argv) == 0  # already done: resumes at the end, nothing to train
  assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "lr"), (["--norm", "foo"], "--norm"), (["--data", "cifar10"], "data_path"),
    (["--data", "cifar100", "--data-path", "/nonexistent"], "not found"),
    (["--epochs", "0"], "epochs")])
def test_cli_train_bad_options(argv, needle, tmp_path, capsys):
  from mimictheory.cli import main
  out = tmp_path / "never"
  assert main(["train", "--out", str(out)] + argv) == 2
  err = capsys.readouterr().err
  assert needle in err and len(err.strip().splitlines()) == 1
  assert not out.exists()


def test_cifar_pickle_copy(tmp_path):
  import pickle
  from mimictheory._src.data import cifar
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, 4))}
    with open(tmp_path / name, "wb") as fh:
      pickle.dump(batch, fh)
  (x, y), (xt, yt) = cifar(tmp_path, classes=10)
  assert x.shape == (20, 32, 32, 3) and xt.shape == (4, 32, 32, 3) and y.shape == (20,)
  assert x.dtype == np.float32 and abs(float(x.mean())) < 1.0


def test_lr_sweep_table(tmp_path, capsys):
  from mimictheory.cli import main
  out = tmp_path / "sweep"
  assert main(["ablation", "lr-sweep", "--data", "synthetic", "--methods", "none,mimic",
               "--lrs", "0.05,1000", "--epochs", "2", "--depth", "3", "--width", "64",
               "--out", str(out), "--quiet"]) == 0
  report = json.loads((out / "lr_sweep.json").read_text())
  assert report["methods"] == ["none", "mimic"] and report["lrs"] == [0.05, 1000.0]
  assert report["best_accuracy"][0][0] > 0.5  # a learnable problem at a sane rate
  assert report["diverged"][0][1] is True  # no normalisation at lr 1000: diverges
  assert (out / "lr_sweep.png").exists() and "| mimic |" in (out / "lr_sweep.md").read_text()
  assert main(["ablation", "lr-sweep", "--methods", "groupnorm", "--out", str(tmp_path / "x")]) == 2
  assert not (tmp_path / "x").exists()


def test_cifar_model_trains_with_augmentation_and_resumes_exactly(tmp_path):
  from mimictheory._src.train import synthetic_images
  cfg = TrainConfig(norm="mimic", model="resnet18", model_width=0.125, epochs=2, batch_size=32,
                    warmup_epochs=0.5, milestones=())
  data = synthetic_images(n=128)
  full = train(cfg, data, tmp_path / "full")
  assert full.status == "finished" and full.history[-1]["test_accuracy"] > 0.5  # 4 classes
  train(cfg, data, tmp_path / "split", max_epochs=1)
  resumed = train(cfg, data, tmp_path / "split")
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(full.model), _leaves(resumed.model)))


def test_augmentation_is_a_crop_and_flip():
  from mimictheory._src.train import _rotate, augment
  x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
  b = augment(x, np.random.default_rng(1))
  np.testing.assert_array_equal(augment(x, np.random.default_rng(1)), b)  # seeded
  # rotation: 0° is the identity, 90° the exact array rotation, ±15° keeps the centre
  np.testing.assert_allclose(_rotate(x, np.zeros(16)), x, atol=1e-6)
  np.testing.assert_allclose(_rotate(x[:1], np.array([90.0]))[0], np.rot90(x[0], k=-1),
                             atol=1e-5)
  a = augment(x, np.random.default_rng(1), rotation=0.0)
  assert a.shape == x.shape and not np.array_equal(a, x)
  # every output is a window of the zero-padded input, possibly mirrored
  padded = np.pad(x[0], ((4, 4), (4, 4), (0, 0)))
  windows = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
  assert any(np.array_equal(a[0], w) or np.array_equal(a[0], w[:, ::-1]) for w in windows)
