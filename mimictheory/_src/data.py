"""Data sets that need no download: scikit-learn's bundled digits, or a user's local MNIST copy.

Inputs come back flattened as float64 (N, d), standardised over the whole set (zero mean
image subtracted, unit overall variance), with integer labels.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["digits", "mnist", "load_images"]


def _standardise(x):
  x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
  x = x - x.mean(axis=0, keepdims=True)
  return x / x.std()


def digits():
  """scikit-learn's bundled 8x8 digits (1797 images, d = 64), an offline stand-in for MNIST."""
  from sklearn.datasets import load_digits
  data = load_digits()
  return _standardise(data.data), data.target.astype(np.int64)


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
      return _standardise(data["x_train"]), np.asarray(data["y_train"], dtype=np.int64)
  folder = path if path.is_dir() else path.parent
  for suffix in ("", ".gz"):
    images = folder / f"train-images-idx3-ubyte{suffix}"
    labels = folder / f"train-labels-idx1-ubyte{suffix}"
    if images.exists() and labels.exists():
      return _standardise(_read_idx(images)), _read_idx(labels).astype(np.int64)
  raise FileNotFoundError(f"mnist: no mnist.npz or train-images-idx3-ubyte[.gz] in {str(path)!r}")


def load_images(mnist_path=None):
  """(x, y, name): the user's MNIST copy when given, else the bundled digits."""
  if mnist_path is not None:
    x, y = mnist(mnist_path)
    return x, y, "MNIST"
  x, y = digits()
  return x, y, "digits (scikit-learn, 8x8)"
