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

from conftest import REPO, run_on_host_devices
from mimictheory._src.data import digits_split, synthetic_data
from mimictheory._src.train import TrainConfig, train

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
            "from mimictheory._src.data import synthetic_data\n"
            "from mimictheory._src.train import TrainConfig, train\n"
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

  def strict(token):
    raise ValueError(f"not JSON: {token}")

  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  last = json.loads(lines[-1], parse_constant=strict)  # NaN would be refused here
  assert last["diverged"] is True and last["train_loss"] is None
  # run again: reported as it ended, nothing trained again (it would diverge the same way)
  steps = []
  again = train(cfg, synthetic_data(), tmp_path, on_step=lambda *a: steps.append(1))
  assert again.status == "diverged" and not steps
  assert [(h["epoch"], h["test_accuracy"]) for h in again.history] == [
      (h["epoch"], h["test_accuracy"]) for h in result.history]


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="group"), "norm"), (dict(lr=0.0), "lr"), (dict(momentum=1.5), "momentum"),
    (dict(epochs=0), "epochs"), (dict(batch_size=10_000), "batch_size")])
def test_bad_config(kwargs, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train(TrainConfig(**kwargs), synthetic_data(), tmp_path)


def test_other_config_or_other_data_in_same_folder_is_refused(tmp_path):
  train(TrainConfig(epochs=1, **SMALL), synthetic_data(), tmp_path)
  with pytest.raises(ValueError, match="another configuration.*lr"):
    train(TrainConfig(epochs=1, **dict(SMALL, lr=0.05)), synthetic_data(), tmp_path)
  with pytest.raises(ValueError, match="other data.*data_fingerprint"):
    train(TrainConfig(epochs=1, **SMALL), synthetic_data(seed=1), tmp_path)
  with pytest.raises(ValueError, match="other data.*data"):
    train(TrainConfig(epochs=1, data="digits", **SMALL), synthetic_data(), tmp_path)


def test_raising_epochs_extends_a_finished_run_exactly(tmp_path):
  data = synthetic_data()
  straight = train(TrainConfig(epochs=3, **SMALL), data, tmp_path / "straight")
  short = train(TrainConfig(epochs=2, **SMALL), data, tmp_path / "extended")
  assert short.status == "finished" and len(short.history) == 2
  longer = train(TrainConfig(epochs=3, **SMALL), data, tmp_path / "extended")
  assert longer.history == straight.history
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(straight.model), _leaves(longer.model)))
  with pytest.raises(ValueError, match="epochs must be >= 3"):
    train(TrainConfig(epochs=1, **SMALL), data, tmp_path / "extended")


def test_damaged_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
  """The latest checkpoint truncated: named in one warning, set aside, and the run resumes
  from the one before, ending exactly where an undisturbed run ends."""
  data = synthetic_data()
  straight = train(TrainConfig(epochs=4, **SMALL), data, tmp_path / "straight")
  out = tmp_path / "damaged"
  train(TrainConfig(epochs=4, **SMALL), data, out, max_epochs=3)
  files = sorted(p for p in (out / "checkpoints" / "3").rglob("*") if p.is_file())
  for f in files:
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  with pytest.warns(RuntimeWarning, match=r"checkpoints/3 is damaged") as record:
    resumed = train(TrainConfig(epochs=4, **SMALL), data, out)
  assert len([w for w in record if "damaged" in str(w.message)]) == 1
  assert resumed.history == straight.history
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(straight.model), _leaves(resumed.model)))
  assert (out / "damaged").exists() and sorted(p.name for p in (out / "checkpoints").iterdir()
                                               if p.name.isdigit())[-1] == "4"


def test_a_bit_flipped_checkpoint_is_detected_and_set_aside(tmp_path):
  """One bit flipped in the largest file of the latest checkpoint (Orbax restores it without
  complaint): the SHA-256 digests recorded at save time catch it; the warning names the file
  and the epoch resumed from, and the run ends exactly where an undisturbed run ends."""
  data = synthetic_data()
  straight = train(TrainConfig(epochs=4, **SMALL), data, tmp_path / "straight")
  out = tmp_path / "flipped"
  train(TrainConfig(epochs=4, **SMALL), data, out, max_epochs=3)
  files = [p for p in (out / "checkpoints" / "3").rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  flipped = bytearray(largest.read_bytes())
  flipped[len(flipped) // 2] ^= 0x10
  largest.write_bytes(bytes(flipped))
  with pytest.warns(RuntimeWarning, match=r"checkpoints/3 is damaged \(file .*"
                    + largest.name + r" changed .*resuming from epoch 2"):
    resumed = train(TrainConfig(epochs=4, **SMALL), data, out)
  assert resumed.resumed_from == 2
  assert resumed.history == straight.history
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(straight.model), _leaves(resumed.model)))


@pytest.mark.parametrize("norm,lr", [("mimic", 1000.0), ("last_bn", 100.0)])
def test_cli_diverging_last_bn_runs_are_recorded(norm, lr, tmp_path):
  """The paper's Table 2 regime: a run with a last BN layer that diverges (its per-class
  variances non-finite too) is recorded as diverged in strict JSON, exit 1, one line."""
  out = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "mimictheory.cli", "train", "--quiet", "--data", "digits",
       "--depth", "16", "--width", "64", "--norm", norm, "--lr", str(lr), "--epochs", "4",
       "--out", str(out)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      l for l in proc.stderr.strip().splitlines() if l.startswith("mimictheory: training diverged")]

  def strict(token):
    raise ValueError(f"not JSON: {token}")

  last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1], parse_constant=strict)
  assert last["diverged"] is True and last["train_loss"] is None
  assert len(last["last_bn_variance"]) == 10 and None in last["last_bn_variance"]


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
  import fcntl
  tmp_path.mkdir(exist_ok=True)
  with open(tmp_path / ".lock", "a") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(RuntimeError, match="in use by another training run"):
      train(TrainConfig(epochs=1, **SMALL), synthetic_data(), tmp_path)
  assert not (tmp_path / "config.json").exists()


def test_digits_are_standardised_with_training_statistics_only():
  (x, _), (xt, _) = digits_split()
  assert np.abs(x.mean(axis=0)).max() < 1e-5 and abs(float(x.std()) - 1) < 1e-5
  assert np.abs(xt.mean(axis=0)).max() > 1e-3  # the test set is not re-centred on itself


def test_batched_evaluation_equals_one_batch():
  from mimictheory._src.nn import MLP
  from mimictheory._src.train import evaluate
  (_, _), (x, y) = synthetic_data()
  model = MLP(x.shape[1], 4, depth=3, width=32, norm="bn", rngs=nnx.Rngs(0))
  model.eval()
  whole = evaluate(model, x, y, batch=len(x))
  for batch in (1, 7, 50):
    np.testing.assert_allclose(evaluate(model, x, y, batch=batch), whole, rtol=1e-5)


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


def test_cli_nothing_is_written_before_validation(tmp_path, capsys):
  """A model that cannot take the data fails before the folder exists (it used to leave a
  config.json that blocked the corrected command)."""
  from mimictheory.cli import main
  out = tmp_path / "run"
  assert main(["train", "--model", "resnet18", "--data", "digits", "--out", str(out),
               "--quiet"]) == 2
  assert "32x32x3" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path):
  """SIGINT mid-run: exit 130, one line on stderr (no traceback), the last complete checkpoint
  intact; the same command then finishes the run."""
  out = tmp_path / "run"
  argv = [sys.executable, "-m", "mimictheory.cli", "train", "--data", "synthetic", "--epochs",
          "60", "--depth", "3", "--width", "64", "--batch-size", "16", "--milestones", "50",
          "--out", str(out), "--quiet"]
  proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=tmp_path)
  deadline = time.time() + 300
  while not (out / "checkpoints" / "2").exists() and time.time() < deadline:
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "epoch" in err
  done = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
  lines = (out / "metrics.jsonl").read_text().splitlines()
  assert max(done) == len(lines) >= 2  # the metrics and the newest checkpoint agree
  target = str(max(done) + 1)  # the same run, extended by one epoch past the interruption
  res = subprocess.run(argv[:7] + [target] + argv[8:], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert res.returncode == 0, res.stderr
  assert len((out / "metrics.jsonl").read_text().splitlines()) == max(done) + 1


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


@pytest.mark.slow
def test_cifar_model_trains_with_augmentation_and_resumes_exactly(tmp_path):
  from mimictheory._src.data import synthetic_images
  cfg = TrainConfig(norm="mimic", model="resnet18", model_width=0.125, epochs=2, batch_size=32,
                    warmup_epochs=0.5, milestones=())
  data = synthetic_images(n=128)
  full = train(cfg, data, tmp_path / "full")
  assert full.status == "finished" and full.history[-1]["test_accuracy"] > 0.5  # 4 classes
  train(cfg, data, tmp_path / "split", max_epochs=1)
  resumed = train(cfg, data, tmp_path / "split")
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(full.model), _leaves(resumed.model)))


def test_augmentation_is_the_official_crop_flip_and_rotation():
  """torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip and RandomRotation(15)
  (nearest neighbour, black fill) before normalisation: here on normalised images, so the
  padding and the uncovered corners take the normalised black `fill`."""
  from mimictheory._src.data import _rotate, augment
  x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
  b = augment(x, np.random.default_rng(1))
  np.testing.assert_array_equal(augment(x, np.random.default_rng(1)), b)  # seeded
  # rotation: 0° is the identity, 90° the exact array rotation, every output pixel is a source
  # pixel (nearest neighbour) or the fill
  fill = np.array([-5.0, -6.0, -7.0], np.float32)
  np.testing.assert_array_equal(_rotate(x, np.zeros(16), fill), x)
  np.testing.assert_array_equal(_rotate(x[:1], np.array([90.0]), fill)[0], np.rot90(x[0], k=-1))
  r = _rotate(x[:1], np.array([15.0]), fill)[0]
  for c in range(3):
    values = set(x[0, :, :, c].ravel().tolist()) | {float(fill[c])}
    assert set(r[:, :, c].ravel().tolist()) <= values
  assert np.array_equal(r[0, 0], fill)  # a corner uncovered at 15°
  a = augment(x, np.random.default_rng(1), rotation=0.0, fill=fill)
  assert a.shape == x.shape and not np.array_equal(a, x)
  # every output is a window of the input padded with the fill, possibly mirrored
  padded = np.concatenate([np.full((40, 40, 1), f, np.float32) for f in fill], axis=-1)
  padded[4:36, 4:36] = x[0]
  windows = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
  assert any(np.array_equal(a[0], w) or np.array_equal(a[0], w[:, ::-1]) for w in windows)


def test_the_last_partial_batch_is_trained_on_and_warm_up_starts_at_1e4(tmp_path):
  """PyTorch's DataLoader keeps the last, partial batch (drop_last=False): 50,000 CIFAR images
  at batch 256 are 195 full batches and one of 80. The official WarmUpLR gives 1e-4 + lr·m/W
  at step m of W, and its MultiStepLR steps only after the warm-up epochs: drops at 82/112/137."""
  from mimictheory.train import epoch_batches, learning_rate_schedule
  spans = epoch_batches(50_000, 256)
  assert len(spans) == 196 and spans[-1] == (195 * 256, 50_000)
  assert len(epoch_batches(50_000, 256, drop_last=True)) == 195
  assert epoch_batches(50_000, 256, devices=3)[-1] == (195 * 256, 195 * 256 + 78)
  config = TrainConfig(lr=0.1, warmup_epochs=2, epochs=150)
  assert config.milestones == (82, 112, 137)
  lr = learning_rate_schedule(config, steps_per_epoch=196)
  for step, want in [(0, 1e-4), (100, 1e-4 + 0.1 * 100 / 392), (391, 1e-4 + 0.1 * 391 / 392),
                     (392, 0.1), (82 * 196 - 1, 0.1), (82 * 196, 0.01), (112 * 196, 1e-3),
                     (137 * 196, 1e-4)]:
    assert abs(float(lr(step)) - want) < 1e-6 * want, step  # float32 schedule
  # 72 training examples at batch 32: the partial batch of 8 is a step, and the epoch's loss
  # is the mean over examples
  data = synthetic_data(96)
  n = len(data[0][0])
  sizes = [32] * (n // 32) + ([n % 32] if n % 32 >= 2 else [])
  losses = []
  result = train(TrainConfig(epochs=1, depth=2, width=16, batch_size=32, milestones=(),
                             warmup_epochs=0), data, tmp_path,
                 on_step=lambda step, model, loss: losses.append(float(loss)))
  assert len(losses) == len(sizes) and sizes[-1] != 32
  want = np.dot(losses, sizes) / sum(sizes)
  assert abs(result.history[0]["train_loss"] - want) < 1e-6 * abs(want)


@pytest.mark.parametrize(
  "norm,data,settings",
  [pytest.param("fixup", "digits_images", dict(epochs=5, batch_size=16, lr=0.02),
                marks=pytest.mark.slow),
   pytest.param("skipinit", "synthetic_images", dict(epochs=3, batch_size=64, lr=0.1),
                marks=pytest.mark.slow)]
)
def test_fixup_and_skipinit_resnets_train(norm, data, settings, tmp_path):
  """The paper's normalisation-free baselines learn: the training loss falls well below chance
  level (ln classes). Fixup as the official code initialises it (a zero classifier and zero
  last convs, and a stem at PyTorch's default, 2.4x smaller than He's) starts slowly: on the
  digits at batch 16 and lr 0.02 its loss stays at 2.30 for two epochs (180 steps), then
  1.71 and 0.65; at batch 64 it barely moves in 5 epochs at lr 0.02-0.05, and at lr 0.1 it
  blows up in the fourth (measured 2026-12-02; with He's stem it learned in 3 epochs)."""
  from mimictheory._src.data import load_data
  train_set, test_set = load_data(data)
  cfg = TrainConfig(model="resnet18", norm=norm, model_width=0.125, warmup_epochs=0.5,
                    milestones=(), augment=False, data=data, **settings)
  result = train(cfg, (train_set, test_set), tmp_path)
  classes = int(train_set[1].max()) + 1
  losses = [h["train_loss"] for h in result.history]
  assert result.status == "finished" and losses[-1] < losses[0]
  assert losses[-1] < 0.85 * np.log(classes)


@pytest.mark.slow
def test_data_parallel_training_on_four_devices_matches_one_device(tmp_path):
  """jax.sharding over 4 forced CPU devices (a subprocess: the device count is fixed when JAX
  starts): batches split, state replicated; losses equal one device's within float32
  summation order, BN and MimicNorm (whose last BN needs the whole batch's statistics), and
  resume stays exact under sharding."""
  script = '''
import json, tempfile, numpy as np, jax
from flax import nnx
from mimictheory.train import TrainConfig, train, synthetic_data, data_mesh
data = synthetic_data(n=1024, d=32, classes=4)
out = {}
for norm in ("bn", "mimic"):
  cfg = TrainConfig(norm=norm, epochs=3, depth=4, width=64, batch_size=64, warmup_epochs=1,
                    milestones=(2,))
  one = train(cfg, data, tempfile.mkdtemp())
  mesh = data_mesh()
  many = train(cfg, data, tempfile.mkdtemp(), mesh=mesh)
  d = tempfile.mkdtemp()
  train(cfg, data, d, mesh=mesh, max_epochs=1)
  resumed = train(cfg, data, d, mesh=mesh)
  leaves = lambda r: [np.asarray(a) for a in jax.tree_util.tree_leaves(nnx.state(r.model))]
  out[norm] = dict(
      one=[h["train_loss"] for h in one.history], many=[h["train_loss"] for h in many.history],
      devices=[len(a.sharding.device_set)
               for a in jax.tree_util.tree_leaves(nnx.state(many.model))],
      resumed=resumed.history == many.history and all(
          np.array_equal(a, b) for a, b in zip(leaves(resumed), leaves(many))))
try:
  train(TrainConfig(epochs=1, depth=3, width=32, batch_size=62), data, tempfile.mkdtemp(),
        mesh=data_mesh())
except ValueError as err:
  out["error"] = str(err)
print(json.dumps(out))
'''
  out = run_on_host_devices(script, tmp_path)
  for norm in ("bn", "mimic"):
    assert set(out[norm]["devices"]) == {4}  # every parameter lives on all four devices
    np.testing.assert_allclose(out[norm]["many"], out[norm]["one"], rtol=2e-5, atol=1e-6)
    assert out[norm]["resumed"]
  assert "batch_size must be a multiple of the 4 devices" in out["error"]


def test_cli_full_disk_is_one_line_and_resumes(tmp_path):
  """A disk that fills up at the second checkpoint: one line on stderr (Orbax's threads printed
  427), exit 2; the first checkpoint intact, and the run resumes from it elsewhere."""
  import shutil
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(disk)],
                           capture_output=True)
  if mounted.returncode != 0:
    pytest.skip("needs a small tmpfs (mount as root) to fill a disk")
  argv = [sys.executable, "-m", "mimictheory.cli", "train", "--quiet", "--data", "digits",
          "--depth", "4", "--width", "128", "--epochs", "3", "--milestones", "2"]
  env = dict(os.environ, PYTHONPATH=REPO)
  try:
    proc = subprocess.run(argv + ["--out", str(disk / "run")], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and "epoch 1 is intact" in lines[0]
    shutil.copytree(disk / "run", tmp_path / "run")
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)
  proc = subprocess.run(argv + ["--out", str(tmp_path / "run")], capture_output=True, text=True,
                        env=env)
  assert proc.returncode == 0, proc.stderr
  assert "finished (resumed from epoch 1): 3 epochs" in proc.stdout


def test_the_command_lines_training_defaults_are_train_configs():
  """`mimictheory train` with no options runs TrainConfig's defaults (the official protocol)."""
  import dataclasses
  from mimictheory.cli import build_parser
  args = build_parser().parse_args(["train"])
  defaults = TrainConfig()
  for field in dataclasses.fields(TrainConfig):
    if hasattr(args, field.name) and field.name not in ("model", "norm", "data", "width"):
      assert tuple(np.atleast_1d(getattr(args, field.name))) == tuple(
          np.atleast_1d(getattr(defaults, field.name))), field.name
  assert args.no_augment is (not defaults.augment) and args.drop_last is defaults.drop_last
