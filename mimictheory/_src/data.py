"""Data sets that need no download: scikit-learn's bundled digits, or a user's local MNIST copy.

Inputs come back flattened as float64 (N, d), standardised over the whole set (zero mean
image subtracted, unit overall variance), with integer labels.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["digits", "mnist", "load_images", "cifar", "standardise"]


def standardise(reference, *others):
  """Flattened float64 copies of `reference` and `others`, standardised with the statistics of
  `reference` alone (its mean image subtracted, divided by its overall standard deviation):
  pass the training set as `reference` so nothing of a test set leaks into the inputs.
  Returns the reference alone, or a tuple when `others` are given."""
  flat = [np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in (reference,) + others]
  mean = flat[0].mean(axis=0, keepdims=True)
  scale = (flat[0] - mean).std()
  out = tuple((a - mean) / scale for a in flat)
  return out if others else out[0]


def digits(raw: bool = False):
  """scikit-learn's bundled 8x8 digits (1797 images, d = 64), an offline stand-in for MNIST;
  standardised over the whole set, or as stored (pixel values 0..16) with `raw=True`."""
  from sklearn.datasets import load_digits
  data = load_digits()
  x = data.data if raw else standardise(data.data)
  return np.asarray(x, dtype=np.float64), data.target.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as fh:
    raw = fh.read()
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
    raise ValueError(f"mnist: {str(path)!r} is not an IDX file of unsigned bytes")
  ndim = raw[3]
  dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4").astype(int)
  data = np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"mnist: {str(path)!r} is truncated")
  return data.reshape(dims)


def mnist(path):
  """A local MNIST copy: `mnist.npz` (keys x_train, y_train) or a folder with the IDX files
  (train-images-idx3-ubyte and train-labels-idx1-ubyte, optionally .gz). Nothing is downloaded.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"mnist: {str(path)!r} does not exist (give mnist.npz or the folder "
                            "with train-images-idx3-ubyte)")
  if path.is_file() and path.suffix == ".npz":
    with np.load(path) as data:
      if "x_train" not in data.files:
        raise ValueError(f"mnist: {str(path)!r} has no x_train array")
      return standardise(data["x_train"]), np.asarray(data["y_train"], dtype=np.int64)
  folder = path if path.is_dir() else path.parent
  for suffix in ("", ".gz"):
    images = folder / f"train-images-idx3-ubyte{suffix}"
    labels = folder / f"train-labels-idx1-ubyte{suffix}"
    if images.exists() and labels.exists():
      return standardise(_read_idx(images)), _read_idx(labels).astype(np.int64)
  raise FileNotFoundError(f"mnist: no mnist.npz or train-images-idx3-ubyte[.gz] in {str(path)!r}")


def load_images(mnist_path=None):
  """(x, y, name): the user's MNIST copy when given, else the bundled digits."""
  if mnist_path is not None:
    x, y = mnist(mnist_path)
    return x, y, "MNIST"
  x, y = digits()
  return x, y, "digits (scikit-learn, 8x8)"


CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


def _unpickle(path: Path) -> dict:
  import pickle
  with open(path, "rb") as fh:
    return pickle.load(fh, encoding="bytes")


def cifar(path, classes: int = 10):
  """A local CIFAR-10/100 copy in the python-pickle format (the folder cifar-10-batches-py or
  cifar-100-python), as NHWC float32 normalised per channel; ((x, y) train, (x, y) test)."""
  if path is None:
    raise ValueError(f"data_path must point at a local CIFAR-{classes} copy (python pickle "
                     "format); nothing is downloaded")
  path = Path(path)
  if classes == 10:
    train_files = [path / f"data_batch_{i}" for i in range(1, 6)]
    test_files, key = [path / "test_batch"], b"labels"
  else:
    train_files, test_files, key = [path / "train"], [path / "test"], b"fine_labels"
  missing = [str(f) for f in train_files + test_files if not f.exists()]
  if missing:
    raise FileNotFoundError(f"data_path: CIFAR-{classes} files not found: {', '.join(missing)}")

  def load(files):
    parts = [_unpickle(f) for f in files]
    x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
    x = (x.astype(np.float32) / 255.0 - np.float32(CIFAR_MEAN[classes])) / np.float32(
        CIFAR_STD[classes])
    return x, y

  return load(train_files), load(test_files)
