"""Data sets that need no download: scikit-learn's bundled digits, or a user's local MNIST copy.

Inputs come back flattened as float64 (N, d), standardised over the whole set (zero mean
image subtracted, unit overall variance), with integer labels.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from mimictheory._src import checks

__all__ = ["digits", "mnist", "load_images", "cifar", "standardise", "DATASETS", "load_data",
           "digits_split", "digits_images", "synthetic_data", "synthetic_images", "augment"]


def standardise(reference, *others):
  """Flattened float64 copies of `reference` and `others`, standardised with the statistics of
  `reference` alone (its mean image subtracted, divided by its overall standard deviation):
  pass the training set as `reference` so nothing of a test set leaks into the inputs.
  Returns the reference alone, or a tuple when `others` are given."""
  flat = [np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in (reference,) + others]
  mean = flat[0].mean(axis=0, keepdims=True)
  scale = (flat[0] - mean).std()
  if not np.isfinite(scale) or scale == 0:
    raise ValueError(f"the images must vary: their {len(flat[0])} rows are identical (or not "
                     "finite), so they cannot be standardised")
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
    try:
      with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x_train", "y_train") if k not in data.files]
        if missing:
          raise ValueError(f"mnist: {str(path)!r} has no {' or '.join(missing)} array (it holds "
                           f"{', '.join(data.files) or 'nothing'})")
        x, y = data["x_train"], data["y_train"]
    except ValueError as err:
      if str(err).startswith("mnist:"):
        raise
      raise ValueError(f"mnist: {str(path)!r} is not a NumPy .npz archive of arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
      raise ValueError(f"mnist: {str(path)!r} cannot be read as .npz ({err})") from None
    if x.ndim < 2 or len(x) < 2 or y.shape != (len(x),):
      raise ValueError(f"mnist: {str(path)!r} must hold x_train of shape (N, ...) with N >= 2 "
                       f"and y_train of shape (N,), got {x.shape} and {y.shape}")
    return standardise(x), np.asarray(y, dtype=np.int64)
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


def _unpickle(path: Path, classes: int, key: bytes) -> dict:
  """One CIFAR batch file, checked: a dict with b"data" (N, 3072) uint8 and N labels."""
  import pickle
  what = f"data_path: {str(path)!r} is not a CIFAR-{classes} batch in the python-pickle format"
  try:
    with open(path, "rb") as fh:
      batch = pickle.load(fh, encoding="bytes")
  except Exception as err:  # EOFError, UnpicklingError, ...: any unreadable file
    raise ValueError(f"{what} ({type(err).__name__}: {str(err)[:80] or 'empty file'})") from None
  if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch) \
        if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{what} (it needs the keys 'data' and {key.decode()!r}; found {found})")
  data = np.asarray(batch[b"data"])
  if data.ndim != 2 or data.shape[1] != 3072 or len(batch[key]) != len(data):
    raise ValueError(f"{what} (data must be (N, 3072) with N labels, got {data.shape} and "
                     f"{len(batch[key])} labels)")
  return batch


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
    parts = [_unpickle(f, classes, key) for f in files]
    x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
    x = (x.astype(np.float32) / 255.0 - np.float32(CIFAR_MEAN[classes])) / np.float32(
        CIFAR_STD[classes])
    return x, y

  return load(train_files), load(test_files)


# ----------------------------------------------------------------------------------------------
# Training data: the named data sets of `train` and the CIFAR augmentation.
# ----------------------------------------------------------------------------------------------
def synthetic_data(n: int = 512, d: int = 16, classes: int = 4, seed: int = 0):
  """Gaussian clusters: a tiny learnable problem for tests (train, test splits).

  >>> from mimictheory.train import synthetic_data
  >>> (x, y), (x_test, y_test) = synthetic_data(n=100, d=8, classes=3)
  >>> x.shape[1], sorted(set(y.tolist())) == [0, 1, 2]
  (8, True)
  """
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * 2.0
  y = rng.integers(0, classes, size=n)
  x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
  cut = n * 3 // 4
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def digits_split(seed: int = 0):
  """scikit-learn's bundled digits, 80/20 split (train, test), then standardised with the
  training images' statistics only (nothing of the test set leaks into the inputs).

  >>> from mimictheory.train import digits_split
  >>> (x_train, y_train), (x_test, y_test) = digits_split()
  >>> x_train.shape[1], len(x_train) + len(x_test)
  (64, 1797)
  """
  from mimictheory._src.data import digits, standardise
  x, y = digits(raw=True)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  cut = len(x) * 4 // 5
  train_x, test_x = standardise(x[:cut], x[cut:])
  return (train_x.astype(np.float32), y[:cut]), (test_x.astype(np.float32), y[cut:])


DATASETS = ("digits", "digits_images", "synthetic", "synthetic_images", "cifar10", "cifar100")


def digits_images(seed: int = 0):
  """The digits as 32x32x3 images (each pixel a 4x4 block, grey in three channels): an honest
  offline stand-in for CIFAR-shaped data, for the CIFAR models."""
  (x, y), (xt, yt) = digits_split(seed)

  def image(a):
    a = np.kron(a.reshape(-1, 8, 8), np.ones((1, 4, 4), a.dtype))
    return np.repeat(a[..., None], 3, axis=-1)

  return (image(x), y), (image(xt), yt)


def load_data(name: str, path=None):
  """((x_train, y_train), (x_test, y_test)) for `name` in digits | digits_images | synthetic |
  synthetic_images | cifar10 | cifar100 (CIFAR from a local copy in the python-pickle format,
  NHWC; nothing is downloaded). An MLP flattens images itself.

  >>> from mimictheory.train import load_data
  >>> (x_train, y_train), _ = load_data("synthetic")
  >>> x_train.ndim, x_train.dtype
  (2, dtype('float32'))
  """
  checks.check_choice("data", name, DATASETS)
  if path is not None and not name.startswith("cifar"):
    raise ValueError(f"data_path applies to cifar10 and cifar100 only (a local copy); data "
                     f"{name!r} is bundled or generated, got data_path {str(path)!r}")
  if name == "digits":
    return digits_split()
  if name == "digits_images":
    return digits_images()
  if name == "synthetic":
    return synthetic_data()
  if name == "synthetic_images":
    return synthetic_images()
  from mimictheory._src.data import cifar
  (x_train, y_train), (x_test, y_test) = cifar(path, classes=100 if name == "cifar100" else 10)
  return (x_train, y_train), (x_test, y_test)


def synthetic_images(n: int = 256, classes: int = 4, seed: int = 0):
  """Tiny 32x32x3 images whose class sets a colour pattern: for tests of the CIFAR models."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(classes, 1, 1, 3)).astype(np.float32)
  y = rng.integers(0, classes, size=n)
  x = (patterns[y] + 0.5 * rng.normal(size=(n, 32, 32, 3))).astype(np.float32)
  cut = n * 3 // 4
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _rotate(x, degrees, fill):
  """Rotate every image of x (N, H, W, C) about its centre by its angle, nearest neighbour,
  `fill` (per channel) outside the source image, as torchvision's RandomRotation (defaults:
  NEAREST, fill 0), all at once by gathering one source pixel per output pixel."""
  n, h, w, _ = x.shape
  theta = np.deg2rad(degrees)[:, None, None]
  yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
  src_y = np.rint(np.cos(theta) * yy - np.sin(theta) * xx + (h - 1) / 2).astype(int)
  src_x = np.rint(np.sin(theta) * yy + np.cos(theta) * xx + (w - 1) / 2).astype(int)
  inside = ((src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w))[..., None]
  gathered = x[np.arange(n)[:, None, None], np.clip(src_y, 0, h - 1), np.clip(src_x, 0, w - 1)]
  return np.where(inside, gathered, fill).astype(x.dtype)


def augment(x, rng: np.random.Generator, rotation: float = 15.0, fill=0.0):
  """The paper's CIFAR augmentation (the official code's torchvision pipeline), seeded: a
  random 32x32 crop of the image padded by 4, a horizontal flip with probability 1/2 and a
  rotation by up to ±`rotation` degrees (nearest neighbour), NHWC. Padding and the corners
  uncovered by the rotation take `fill` (a number or one per channel): torchvision fills with
  black before normalising, so pass the normalised black (`train` passes each channel's
  minimum over the training images, which is black for CIFAR and the digits).

  >>> import numpy as np
  >>> from mimictheory.train import augment
  >>> x = np.ones((2, 32, 32, 3), np.float32)
  >>> out = augment(x, np.random.default_rng(0), fill=-1.0)
  >>> out.shape, sorted(set(np.unique(out).tolist()))
  ((2, 32, 32, 3), [-1.0, 1.0])
  """
  n, h, w, c = x.shape
  fill = np.broadcast_to(np.asarray(fill, dtype=x.dtype), (c,))
  padded = np.empty((n, h + 8, w + 8, c), dtype=x.dtype)
  padded[...] = fill
  padded[:, 4:4 + h, 4:4 + w] = x
  dy, dx = rng.integers(0, 9, size=n), rng.integers(0, 9, size=n)
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  if rotation > 0:
    out = _rotate(out, rng.uniform(-rotation, rotation, size=n), fill)
  return out
