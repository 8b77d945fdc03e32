"""`mimictheory reproduce`: a tiny grid renders its table and its figure files, and a second run
of the same command trains nothing (every run resumes finished)."""
import json

import pytest

from mimictheory.cli import main


@pytest.mark.slow
def test_table_and_curves_from_a_tiny_grid_and_no_training_on_rerun(tmp_path, capsys):
  common = ["--data", "synthetic_images", "--epochs", "1", "--out", str(tmp_path), "--quiet"]
  table = ["reproduce", "table2", "--lrs", "0.05", "--norms", "mimic,none"] + common
  assert main(table) == 0
  assert "4 run(s) trained" in capsys.readouterr().out  # 2 norms x (warm-up, none)
  report = json.loads((tmp_path / "table2" / "table2.json").read_text())
  assert report["norms"] == ["none", "mimic"] and report["lrs"] == [0.05]
  for protocol in ("warmup", "no_warmup"):
    cells = report["protocols"][protocol]
    assert all(0 <= a[0] <= 100 for a in cells["best_accuracy"])
    assert all(f[0] <= b[0] for f, b in zip(cells["final_accuracy"], cells["best_accuracy"]))
  text = (tmp_path / "table2" / "table2.md").read_text()
  assert "small version" in text and "without warm-up" in text and "with the official" in text
  assert main(table) == 0
  assert "0 run(s) trained" in capsys.readouterr().out

  curves = ["reproduce", "fig6", "--norms", "mimic"] + common
  assert main(curves) == 0
  assert {"fig6.png", "fig6.pdf"} <= {p.name for p in (tmp_path / "fig6").iterdir()}
  assert main(curves) == 0
  assert "0 run(s) trained" in capsys.readouterr().out


def test_a_selection_outside_the_grid_is_refused(tmp_path, capsys):
  assert main(["reproduce", "fig7", "--norms", "groupnorm", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "select no run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("experiment", ["table1", "table2", "fig6", "fig7", "supp3"])
def test_every_experiment_plans_the_papers_grid(experiment):
  from mimictheory._src.reproduce import plan
  runs = plan(experiment)
  sizes = {"table1": 16, "table2": 56, "fig6": 5, "fig7": 8, "supp3": 2}
  assert len(runs) == sizes[experiment] and len({r.name for r in runs}) == len(runs)


def test_the_full_settings_are_the_official_scripts():
  """With CIFAR-100: 2 warm-up epochs and drops at 82/112/137 (the official MultiStepLR at
  80/110/135 steps only after the warm-up); Table 2 runs with and without the warm-up, 10
  epochs, no drop."""
  from mimictheory._src.reproduce import NO_WARMUP, WARMUP, Run, _settings
  table1 = _settings("table1", Run("vgg16", "mimic", 0.1, 0), True, None, None)
  assert table1["warmup_epochs"] == 2.0 and table1["milestones"] == (82, 112, 137)
  assert table1["epochs"] == 150 and table1["batch_size"] == 256
  warm = _settings("table2", Run("vgg16", "mimic", 0.1, 0, WARMUP), True, None, None)
  cold = _settings("table2", Run("vgg16", "mimic", 0.1, 0, NO_WARMUP), True, None, None)
  assert (warm["warmup_epochs"], cold["warmup_epochs"]) == (2.0, 0.0)
  assert warm["milestones"] == cold["milestones"] == () and warm["epochs"] == 10
