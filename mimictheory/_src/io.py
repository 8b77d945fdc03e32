"""Output helpers: atomic files (a temporary name in the same folder, then rename), progress,
and a clean exit on Ctrl-C for the long command-line jobs."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path

__all__ = ["atomic_path", "atomic_paths", "ensure_dir", "progress_bar", "exit_cleanly_on_interrupt"]

_temporaries: set[Path] = set()  # written but not yet renamed: removed on an interrupt
_renaming = 0  # > 0 while a set of files is being renamed into place
_interrupted = False


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
def atomic_paths(*paths):
  """Yield temporary paths beside `paths`; on success rename them all to `paths` (an interrupt
  waits for the last rename, so files written together land together), else delete them."""
  paths = [Path(p) for p in paths]
  temporaries = [_new_temporary(p) for p in paths]
  _temporaries.update(temporaries)
  try:
    yield temporaries
    _rename_all(temporaries, paths)
  except BaseException:
    for tmp in temporaries:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    raise
  finally:
    _temporaries.difference_update(temporaries)


def _rename_all(temporaries, paths):
  global _renaming
  _renaming += 1
  try:
    for tmp, path in zip(temporaries, paths):
      os.replace(tmp, path)
      _temporaries.discard(tmp)
  finally:
    _renaming -= 1
  if _interrupted and not _renaming:
    _exit_interrupted()


@contextlib.contextmanager
def atomic_path(path):
  """Yield a temporary path beside `path`; on success rename it to `path`, else delete it."""
  with atomic_paths(path) as (tmp,):
    yield tmp


def _exit_interrupted():
  """Remove the unfinished temporaries and leave at once with status 130 (128 + SIGINT).

  `os._exit`, not KeyboardInterrupt: an exception raised while XLA compiles or runs on other
  threads can end in a crash at interpreter shutdown (seen: a segfault in 2 of 6 interrupts)."""
  for tmp in list(_temporaries):
    with contextlib.suppress(OSError):
      os.unlink(tmp)
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  os.write(2, b"mimictheory: interrupted; every file written so far is complete\n")
  os._exit(130)


def _on_interrupt(signum, frame):
  global _interrupted
  _interrupted = True
  if not _renaming:
    _exit_interrupted()


@contextlib.contextmanager
def exit_cleanly_on_interrupt():
  """While active, Ctrl-C (SIGINT) exits with status 130 leaving no temporary file and no
  half-written set of files (see `atomic_paths`). For jobs whose progress lives in their output
  files (figures, phase diagrams); training saves a checkpoint instead (module `train`)."""
  previous = signal.signal(signal.SIGINT, _on_interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
