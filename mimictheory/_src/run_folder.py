"""A training run's folder: everything `train` keeps on disk, apart from the optimisation.

`config.json` (the configuration and a fingerprint of the data: a resume on anything else is
refused), `metrics.jsonl` (one strict-JSON line per epoch, non-finite numbers as null), the
Orbax checkpoints with their SHA-256 digests (`checkpoint_digests.json`: a damaged checkpoint
is named, set aside in `damaged/` and the newest intact one restored), the space check before
a checkpoint is written, the lock that refuses a second run into the folder, and the Ctrl-C
handling that stops at a step boundary.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mimictheory._src.io import atomic_path, strict_json

__all__ = ["checkpointer", "fingerprint", "lock", "deferred_interrupt", "start_config",
           "record_digest", "restore", "check_space", "save_checkpoint", "read_history",
           "write_history", "json_line", "METRICS", "primary"]


def checkpointer(out: Path):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(out.resolve() / "checkpoints",
                               options=ocp.CheckpointManagerOptions(max_to_keep=3))


def primary() -> bool:
  """This process writes the run's files: the only one, or process 0 of `jax.distributed`
  (the others train the same steps on their devices; Orbax coordinates the checkpoints)."""
  import jax
  return jax.process_index() == 0


def fingerprint(data) -> dict:
  """Shapes and a SHA-256 of the arrays: a resumed run must see the same data."""
  digest = hashlib.sha256()
  for a in (a for split in data for a in split):
    digest.update(np.ascontiguousarray(a).tobytes())
  return {"shapes": [list(np.shape(a)) for split in data for a in split],
          "sha256": digest.hexdigest()}


@contextlib.contextmanager
def lock(out: Path):
  """Hold an exclusive lock on out/.lock for the run (released by the OS if the process dies)."""
  try:
    import fcntl
  except ImportError:  # not POSIX: no lock
    yield
    return
  import jax
  name = ".lock" if jax.process_index() == 0 else f".lock-{jax.process_index()}"
  with open(out / name, "a") as handle:  # one per process of a multi-process run
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      raise RuntimeError(f"out {str(out)!r} is in use by another training run; wait for it to "
                         "finish or choose another folder") from None
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def deferred_interrupt():
  """While training, Ctrl-C (SIGINT) sets a flag instead of raising, so that no step or
  checkpoint is cut in half; the loop stops at the next step boundary. A second Ctrl-C has its
  usual effect. Only in the main thread (where Python delivers signals)."""
  hit = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield hit
    return
  previous = signal.getsignal(signal.SIGINT)

  def handler(signum, frame):
    hit.set()
    signal.signal(signal.SIGINT, previous)

  signal.signal(signal.SIGINT, handler)
  try:
    yield hit
  finally:
    signal.signal(signal.SIGINT, previous)


def start_config(out: Path, config, fingerprint: dict) -> None:
  """Refuse another configuration (a dataclass) or other data in `out`; allow a larger
  `epochs`; write config.json (atomically)."""
  if not primary():  # a multi-process run: process 0 checks and writes it
    return
  path = out / "config.json"
  current = json.loads(json.dumps(dict(dataclasses.asdict(config), data_fingerprint=fingerprint)))
  if path.exists():
    saved = json.loads(path.read_text())
    mine = {k: v for k, v in current.items() if k != "epochs"}
    theirs = {k: v for k, v in saved.items() if k != "epochs"}
    if mine != theirs:
      what = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
      raise ValueError(f"out {str(out)!r} holds a run with another configuration or other data "
                       f"(differs in {', '.join(what)}); use a new folder")
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(current, sort_keys=True))


_DIGESTS = "checkpoint_digests.json"


def _digest_files(folder: Path) -> dict:
  """SHA-256 of every file under a checkpoint folder, by path relative to it."""
  out = {}
  for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
      for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    out[str(path.relative_to(folder))] = digest.hexdigest()
  return out


def _read_digests(out: Path) -> dict:
  try:
    return json.loads((out / _DIGESTS).read_text())
  except (OSError, ValueError):  # none yet, or a damaged record: nothing to check against
    return {}


def record_digest(out: Path, step: int, keep) -> None:
  """Add checkpoint `step`'s file digests to out/checkpoint_digests.json (atomically), keeping
  only the steps in `keep` (the checkpoints Orbax still holds)."""
  digests = {k: v for k, v in _read_digests(out).items() if int(k) in set(keep)}
  digests[str(step)] = _digest_files(out / "checkpoints" / str(step))
  with atomic_path(out / _DIGESTS) as tmp:
    tmp.write_text(json.dumps(digests, sort_keys=True))


def _check_digest(out: Path, step: int, digests: dict) -> None:
  """Raise ValueError naming the first file of checkpoint `step` whose bytes differ from the
  digest recorded when it was written (a checkpoint written before its digest, by a run killed
  in between, has none and is not checked)."""
  expected = digests.get(str(step))
  if expected is None:
    return
  found = _digest_files(out / "checkpoints" / str(step))
  for name in sorted(set(expected) | set(found)):
    if expected.get(name) != found.get(name):
      what = "missing" if name not in found else "unexpected" if name not in expected else \
          "changed since it was written (SHA-256 mismatch)"
      raise ValueError(f"file {name} {what}")


def restore(out: Path, model, opt):
  """(manager, epochs): the newest intact checkpoint restored into model and optimiser. A
  checkpoint whose files differ from the SHA-256 digests recorded when it was written, or that
  Orbax cannot read, is named in a warning (with the epoch resumed from) and moved to
  out/damaged/."""
  import orbax.checkpoint as ocp
  folder = out / "checkpoints"
  for tmp in folder.glob("*.orbax-checkpoint-tmp*") if folder.exists() else ():
    shutil.rmtree(tmp, ignore_errors=True)  # a save cut short (we hold the lock)
  manager = checkpointer(out)
  target = {"model": nnx.state(model), "optimizer": nnx.state(opt)}
  digests = _read_digests(out)
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      _check_digest(out, step, digests)
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as err:  # Orbax raises many kinds for a damaged checkpoint
      manager.close()
      aside = out / "damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      aside.parent.mkdir(exist_ok=True)
      shutil.move(str(folder / str(step)), aside)
      reason = str(err).splitlines()[0][:200] if isinstance(err, ValueError) else \
          type(err).__name__
      damaged.append((folder / str(step), reason, aside))
      manager = checkpointer(out)
      continue
    nnx.update(model, restored["model"])
    nnx.update(opt, restored["optimizer"])
    _warn_damaged(damaged, step)
    return manager, step
  _warn_damaged(damaged, 0)
  return manager, 0


def _warn_damaged(damaged, step: int) -> None:
  for path, reason, aside in damaged:
    resume = f"resuming from epoch {step}" if step else "no intact checkpoint: starting at epoch 0"
    warnings.warn(f"checkpoint {path} is damaged ({reason}); moved to {aside}, {resume}",
                  RuntimeWarning, stacklevel=4)


def json_line(record: dict) -> str:
  """Strict JSON: non-finite numbers, nested ones included (the per-class last-BN variance),
  become null."""
  return strict_json(record)


def check_space(out: Path, state, epoch: int) -> None:
  """Refuse, with one OSError (ENOSPC), a checkpoint the disk cannot hold, before Orbax starts
  writing it: a full disk in the middle of Orbax's asynchronous save printed hundreds of lines
  of tracebacks from its threads. The previous checkpoint stays intact; a rerun resumes."""
  import errno
  need = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(state))
  need = int(need * 1.1) + (1 << 16)  # Orbax's metadata and OCDBT manifests
  free = shutil.disk_usage(out).free
  if free < need:
    raise OSError(errno.ENOSPC, f"no space left on the device of {out} for the checkpoint of "
                  f"epoch {epoch + 1} (about {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB "
                  f"free); {f'epoch {epoch} is intact' if epoch else 'nothing is lost'}: free "
                  "space and run the same command again to resume")


METRICS = "metrics.jsonl"


def save_checkpoint(out: Path, manager, epoch: int, model, opt) -> None:
  """Checkpoint `epoch` (model and optimiser state): the space checked first, Orbax's write
  (temporary name, then rename) waited for, then its files' digests recorded."""
  import orbax.checkpoint as ocp
  state = {"model": nnx.state(model), "optimizer": nnx.state(opt)}
  check_space(out, state, epoch - 1)
  manager.save(epoch, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  if primary():
    record_digest(out, epoch, manager.all_steps())


def read_history(out: Path, epochs: int) -> list:
  """The metrics of the first `epochs` epochs (lines beyond the checkpoint are dropped)."""
  path = out / METRICS
  if not path.exists():
    return []
  lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in lines if r["epoch"] <= epochs]


def write_history(out: Path, history: list) -> None:
  """out/metrics.jsonl: one strict-JSON line per epoch, written atomically (by process 0 of a
  multi-process run)."""
  if not primary():
    return
  with atomic_path(out / METRICS) as tmp:
    tmp.write_text("".join(json_line(r) + "\n" for r in history))
