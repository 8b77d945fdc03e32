"""Output helpers: atomic files (a temporary name in the same folder, then rename), progress."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "ensure_dir", "progress_bar"]


def progress_bar(iterable, enabled: bool, desc: str):
  """`iterable` wrapped in a tqdm progress bar when `enabled`."""
  if not enabled:
    return iterable
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=desc, leave=False)


def ensure_dir(path) -> Path:
  """Create `path` (and parents) and check that it is a writable folder."""
  path = Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise OSError(f"--out {str(path)!r} cannot be created: {err.strerror or err}") from None
  if not os.access(path, os.W_OK):
    raise OSError(f"--out {str(path)!r} is not writable")
  return path


@contextlib.contextmanager
def atomic_path(path):
  """Yield a temporary path beside `path`; on success rename it to `path`, else delete it."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                             dir=path.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
