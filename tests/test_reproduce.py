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
  assert "2 run(s) trained" in capsys.readouterr().out
  report = json.loads((tmp_path / "table2" / "table2.json").read_text())
  assert report["norms"] == ["none", "mimic"] and report["lrs"] == [0.05]
  assert all(0 <= a[0] <= 100 for a in report["best_accuracy"])
  assert "small version" in (tmp_path / "table2" / "table2.md").read_text()
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
  sizes = {"table1": 16, "table2": 28, "fig6": 5, "fig7": 8, "supp3": 2}
  assert len(runs) == sizes[experiment] and len({r.name for r in runs}) == len(runs)
