"""Ablations: the structure of the paper's Table 2 (methods against learning rates).

Every run is an ordinary `train` run in `out/runs/<method>_lr<lr>`, so an interrupted sweep
resumes where it stopped. The table holds the best test accuracy within the first `epochs`
epochs, or "diverged".
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mimictheory._src import checks
from mimictheory._src.io import progress_bar, write_table
from mimictheory._src.norms import ABLATION_METHODS, MODEL_NORMS, check_norm
from mimictheory._src.train import TrainConfig, train

__all__ = ["LrSweep", "lr_sweep"]

METHODS = ABLATION_METHODS
LEARNING_RATES = (0.01, 0.05, 0.1, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class LrSweep:
  methods: tuple
  lrs: tuple
  best_accuracy: np.ndarray  # (methods, lrs); nan where the run diverged before an epoch ended
  diverged: np.ndarray  # (methods, lrs) bool
  epochs: int
  data: str

  def markdown(self) -> str:
    head = "| method | " + " | ".join(f"lr {lr:g}" for lr in self.lrs) + " |"
    lines = [head, "|---" * (len(self.lrs) + 1) + "|"]
    for i, method in enumerate(self.methods):
      cells = []
      for j in range(len(self.lrs)):
        acc = self.best_accuracy[i, j]
        text = "—" if np.isnan(acc) else f"{100 * acc:.1f}"
        cells.append(text + (" (diverged)" if self.diverged[i, j] else ""))
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lr_sweep(data, out, methods=METHODS, lrs=LEARNING_RATES, epochs: int = 5, depth: int = 16,
             width: int = 256, batch_size: int = 128, seed: int = 0, data_name: str = "digits",
             progress: bool = False) -> LrSweep:
  """Train every method at every learning rate for `epochs` epochs (warm-up 1 epoch, no decay)
  and tabulate the best test accuracy; writes lr_sweep.{json,md,png} into `out`."""
  methods = tuple(check_norm(m, MODEL_NORMS, "method") for m in methods)
  lrs = tuple(float(checks.check_positive("lr", lr)) for lr in lrs)
  epochs = checks.check_int("epochs", epochs)
  out = Path(out)
  best = np.full((len(methods), len(lrs)), np.nan)
  diverged = np.zeros((len(methods), len(lrs)), bool)
  runs = [(i, j) for i in range(len(methods)) for j in range(len(lrs))]
  for i, j in progress_bar(runs, progress, "runs"):
    config = TrainConfig(norm=methods[i], depth=depth, width=width, epochs=epochs,
                         batch_size=batch_size, lr=lrs[j], warmup_epochs=1.0, milestones=(),
                         seed=seed)
    result = train(config, data, out / "runs" / f"{methods[i]}_lr{lrs[j]:g}")
    accuracies = [r["test_accuracy"] for r in result.history if not r.get("diverged")]
    best[i, j] = max(accuracies) if accuracies else np.nan
    diverged[i, j] = result.status == "diverged"
  sweep = LrSweep(methods, lrs, best, diverged, epochs, data_name)
  _write(sweep, out)
  return sweep


def _write(sweep: LrSweep, out: Path) -> None:
  from mimictheory._src.plotting import new_figure, save_figure, STYLE
  import matplotlib
  payload = dict(methods=sweep.methods, lrs=sweep.lrs, epochs=sweep.epochs, data=sweep.data,
                 best_accuracy=np.asarray(sweep.best_accuracy, float).tolist(),
                 diverged=sweep.diverged.tolist())
  write_table(out, "lr_sweep", f"Best test accuracy (%) in the first {sweep.epochs} epochs, "
              f"{sweep.data}\n\n" + sweep.markdown(), payload)
  with matplotlib.rc_context(STYLE):
    fig, ax = new_figure(5.5, 3.8)
    _draw_sweep(ax, sweep)
    save_figure(fig, out / "lr_sweep.png")


def _draw_sweep(ax, sweep: LrSweep) -> None:
  for i, method in enumerate(sweep.methods):
    ax.semilogx(sweep.lrs, 100 * sweep.best_accuracy[i], "o-", label=method)
    bad = sweep.diverged[i]
    ax.semilogx(np.asarray(sweep.lrs)[bad], np.zeros(bad.sum()), "x", color="k")
  ax.set_xlabel("learning rate")
  ax.set_ylabel(f"best test accuracy (%), first {sweep.epochs} epochs")
  ax.set_title(f"Learning-rate sweep ({sweep.data}; x: diverged)")
  ax.legend()
