"""Output helpers: atomic files (a temporary name in the same folder, then rename), progress."""
from __future__ import annotations

import contextlib
import os
import secrets
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


def _new_temporary(path: Path) -> Path:
  """A new empty file beside `path`, created with mode 0o666 minus the process umask (as
  `open` would), without touching the umask (which is process-wide, so not thread-safe)."""
  for _ in range(100):
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
    try:
      os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
      return tmp
    except FileExistsError:
      continue
  raise OSError(f"cannot create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path):
  """Yield a temporary path beside `path`; on success rename it to `path`, else delete it."""
  path = Path(path)
  tmp = _new_temporary(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
