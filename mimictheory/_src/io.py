"""Output helpers: atomic files (a temporary name in the same folder, then rename), progress,
and a clean exit on Ctrl-C for the long command-line jobs."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import sys
from pathlib import Path

__all__ = ["atomic_path", "atomic_paths", "ensure_dir", "progress_bar", "exit_cleanly_on_interrupt",
           "remove_stale_temporaries", "out_path", "strict_json", "write_table"]

_temporaries: set[Path] = set()  # written but not yet renamed: removed on an interrupt
_renaming = 0  # > 0 while a set of files is being renamed into place
_interrupted = 0  # the signal that asked us to stop (SIGINT or SIGTERM), 0 if none


def progress_bar(iterable, enabled: bool, desc: str):
  """`iterable` wrapped in a tqdm progress bar when `enabled`."""
  if not enabled:
    return iterable
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=desc, leave=False)


def out_path(path) -> Path:
  """`path` as a Path, refusing an empty name (Path("") is the current folder)."""
  if not str(path).strip():
    raise ValueError("--out must name a folder, got ''")
  return Path(path)


def ensure_dir(path) -> Path:
  """Create `path` (and parents) and check that it is a writable folder."""
  path = out_path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise OSError(f"--out {str(path)!r} cannot be created: {err.strerror or err}") from None
  if not os.access(path, os.W_OK):
    raise OSError(f"--out {str(path)!r} is not writable")
  try:  # a real write, before any work: /proc and read-only mounts pass os.access as root
    os.remove(_new_temporary(path / "probe"))
  except OSError as err:
    raise OSError(f"--out {str(path)!r} is not writable: {err.strerror or err}") from None
  remove_stale_temporaries(path)
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
  """Remove the unfinished temporaries and leave at once with status 128 + the signal (130 for
  SIGINT, 143 for SIGTERM).

  `os._exit`, not KeyboardInterrupt: an exception raised while XLA compiles or runs on other
  threads can end in a crash at interpreter shutdown (seen: a segfault in 2 of 6 interrupts)."""
  for tmp in list(_temporaries):
    with contextlib.suppress(OSError):
      os.unlink(tmp)
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  what = b"terminated" if _interrupted == signal.SIGTERM else b"interrupted"
  os.write(2, b"mimictheory: " + what + b"; every file written so far is complete\n")
  os._exit(128 + int(_interrupted or signal.SIGINT))


def _on_interrupt(signum, frame):
  global _interrupted
  _interrupted = signum
  if not _renaming:
    _exit_interrupted()


def remove_stale_temporaries(folder, age: float = 120.0) -> list[Path]:
  """Remove temporaries of our own naming (`.NAME.<12 hex>.tmp.SUFFIX`, see `_new_temporary`)
  left in `folder` by a process killed without a chance to clean up (SIGKILL, power loss),
  untouched for `age` seconds (a live job's temporary is being written, so it is recent)."""
  import re
  import time
  pattern = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[^.]+)?$")
  removed = []
  for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
    if path.is_file() and pattern.match(path.name):
      with contextlib.suppress(OSError):
        if time.time() - path.stat().st_mtime < age:
          continue
        path.unlink()
        removed.append(path)
  return removed


@contextlib.contextmanager
def exit_cleanly_on_interrupt():
  """While active, Ctrl-C (SIGINT) exits with status 130, and SIGTERM (a scheduler's or
  `kill`'s stop) with 143, leaving no temporary file and no half-written set of files (see
  `atomic_paths`). For jobs whose progress lives in their output files (figures, phase
  diagrams); training saves a checkpoint instead (module `train`)."""
  previous = {s: signal.signal(s, _on_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _finite_or_null(value):
  """`value` with every non-finite float, at any depth of lists, tuples and dicts, as None."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  return value


def strict_json(value, indent: int | None = None) -> str:
  """Strict JSON (RFC 8259): every non-finite number, nested ones included, becomes null.

  >>> strict_json({"loss": float("nan"), "acc": [0.5, float("inf")]})
  '{"loss": null, "acc": [0.5, null]}'
  """
  return json.dumps(_finite_or_null(value), indent=indent, allow_nan=False)


def write_table(out, stem: str, markdown: str, payload: dict) -> list[Path]:
  """The one writer of the project's result tables: `stem.md` (for people) and `stem.json`
  (strict JSON, for programs) in the folder `out`, written together and atomically (both or
  neither). Returns their paths.

  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...   [p.name for p in write_table(d, "t", "a table", {"a": [1.0, float("nan")]})]
  ['t.md', 't.json']
  """
  out = ensure_dir(out)
  paths = [out / f"{stem}.md", out / f"{stem}.json"]
  with atomic_paths(*paths) as (md, js):
    md.write_text(markdown.rstrip("\n") + "\n")
    js.write_text(strict_json(payload, indent=1) + "\n")
  return paths
