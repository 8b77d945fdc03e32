"""The command line: outputs, one-line errors with exit code 2, no partial files."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mimictheory as mt
from mimictheory.cli import main
from conftest import REPO


@pytest.mark.slow
def test_phase_writes_all_norms_side_by_side(tmp_path, capsys):
  out = tmp_path / "ph"
  rc = main(["phase", "--activation", "erf", "--sw2", "0.5:4:12", "--sb2", "0:0.3:9",
             "--out", str(out), "--quiet"])
  assert rc == 0
  data = np.load(out / "phase.npz")
  for norm in ("none", "weight_mean"):
    for key in ("qstar", "chi1", "xi_c"):
      assert f"{norm}_{key}" in data.files
      assert data[f"{norm}_{key}"].dtype == np.float64  # the command's data keeps float64
    assert data[f"{norm}_chi1"].shape == (12, 9)
  assert "none_sw2" not in data.files  # the axes are stored once
  np.testing.assert_allclose(data["sw2"], np.linspace(0.5, 4, 12))
  # BN: σw², σb² drop out; the row is χ1 against the batch size, tending to Theorem 2's value
  batches, chi = data["batch_norm_batch"], data["batch_norm_chi1"]
  assert batches[0] == 4 and np.all(np.diff(chi) < 0)
  assert chi[-1] == pytest.approx(float(data["batch_norm_chi1_limit"]), rel=1e-3)
  assert float(data["batch_norm_chi1_limit"]) == pytest.approx(
      float(mt.chi1("erf", norm="batch_norm_paper")), rel=1e-14)
  assert (out / "phase.png").stat().st_size > 10_000
  assert sorted(p.name for p in out.iterdir()) == ["phase.npz", "phase.pdf", "phase.png"]


def test_phase_one_norm(tmp_path):
  out = tmp_path / "ph"
  assert main(["phase", "--activation", "relu", "--norm", "weight_mean", "--sw2", "1:4:5",
               "--sb2", "0:0.2:4", "--out", str(out), "--quiet"]) == 0
  assert [k for k in np.load(out / "phase.npz").files if k.endswith("_chi1")] == [
      "weight_mean_chi1"]


def test_maps_prints_theorem_3(capsys):
  assert main(["maps", "--activation", "relu", "--norm", "weight_mean", "--sw2", "stable"]) == 0
  text = capsys.readouterr().out
  assert "chi1 = 1.466942207" in text and "+0.0000000000" in text and "unstable" in text


@pytest.mark.parametrize("argv,needle", [
    (["phase", "--sw2", "0.5:4:x"], "--sw2"),
    (["phase", "--activation", "softsign"], "--activation"),
    (["phase", "--norm", "group"], "norm"),
    (["phase", "--sw2=-1:2:5"], "sw2 must be > 0"),
    (["phase", "--fan-in", "0"], "fan_in must be an integer >= 2"),
    (["maps", "--sw2", "0"], "sw2 must be > 0"),
    (["maps", "--fan-in", "1"], "fan_in must be an integer >= 2"),
    (["figures", "--only", "fig9"], "--only"),
    (["figures", "--mnist", "/nonexistent/mnist"], "mnist"),
    (["phase", "--norm", "none,layer"], "norm"),
    ([], "command"),
    (["phase", "--sb2", "-1:0:5"], "sb2 must be >= 0"),  # not read as an option
    (["phase", "--sw2", "1:inf:3"], "finite START, STOP"),  # no NumPy warning first
    (["phase", "--sw2", "1:2:100000000"], "NUM <= 100000"),
    (["phase", "--sw2", "1:2:100000", "--sb2", "0:1:100000"], "cells"),  # no 71-PiB traceback
    (["figures", "--only", ","], "--only must name at least one figure"),
    (["train", "--milestones=-5"], "milestones must be > 0"),
    (["train", "--milestones", "-5"], "milestones must be > 0"),
])
def test_bad_options_one_line_exit_2(argv, needle, tmp_path, capsys):
  out = tmp_path / "never"
  if argv and argv[0] in ("phase", "figures"):
    argv = argv + ["--out", str(out)]
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and needle in err
  assert not out.exists()


@pytest.mark.parametrize("argv", [["phase", "--sw2", "1:2:3", "--sb2", "0:0.1:2"],
                                  ["figures", "--only", "fig4"]])
def test_unwritable_out(argv, tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert main(argv + ["--out", str(blocker / "sub"), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "--out" in err and len(err.strip().splitlines()) == 1


def test_console_script_no_traceback(tmp_path):
  exe = os.path.join(os.path.dirname(sys.executable), "mimictheory")
  cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "mimictheory.cli"]
  res = subprocess.run(cmd + ["maps", "--sb2", "-1"], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert res.returncode == 2
  assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr


def test_runtime_failures_exit_1_with_their_first_line(monkeypatch, capsys):
  """An XLA failure (here a simulated out-of-memory) is not a usage error: exit 1, one line
  with XLA's first line and a hint, no traceback."""
  import mimictheory.cli as cli

  def oom(args):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB\n"
                       "BufferAssignment OOM Debugging ...")

  parser = cli.build_parser()
  monkeypatch.setattr(cli, "build_parser", lambda: parser)
  parser._subparsers._group_actions[0].choices["maps"].set_defaults(run=oom)
  assert cli.main(["maps"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "RESOURCE_EXHAUSTED" in err[0] and "smaller" in err[0]


_INTERRUPT_DURING_WRITE = """
import os, signal, sys
from pathlib import Path
from mimictheory._src import io
out, when = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace
def replace(src, dst):  # Ctrl-C arrives right after the first of the three renames
  real_replace(src, dst)
  if when == "renaming":
    os.kill(os.getpid(), signal.SIGINT)
os.replace = replace
with io.exit_cleanly_on_interrupt():
  with io.atomic_paths(out / "a.png", out / "a.pdf", out / "a.npz") as temporaries:
    for tmp in temporaries:
      tmp.write_text("data")
    if when == "writing":
      os.kill(os.getpid(), signal.SIGINT)
print("not reached")
"""


@pytest.mark.parametrize("when, landed", [("writing", []), ("renaming", ["a.npz", "a.pdf",
                                                                          "a.png"])])
def test_ctrl_c_leaves_whole_sets_of_files_and_exits_130(tmp_path, when, landed):
  """Interrupted while writing: nothing lands; while renaming a figure's files: all of them
  land, then the exit. Never a temporary left behind, never a traceback."""
  res = subprocess.run([sys.executable, "-c", _INTERRUPT_DURING_WRITE, str(tmp_path), when],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
  assert res.returncode == 130, res.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == landed  # no .tmp files either
  assert res.stderr.strip().splitlines() == [
      "mimictheory: interrupted; every file written so far is complete"]
  assert "not reached" not in res.stdout


@pytest.mark.slow
def test_ctrl_c_during_figures_exits_130_with_complete_files(tmp_path):
  import signal
  import time
  proc = subprocess.Popen([sys.executable, "-m", "mimictheory.cli", "figures", "--only",
                           "fig4,supp1", "--out", str(tmp_path), "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  deadline = time.time() + 120
  while not list(tmp_path.glob("fig4.*")) and time.time() < deadline:  # fig4 done or writing
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (0, 130), err  # 0 if it had finished; never a crash (< 0)
  names = {p.name for p in tmp_path.iterdir()}
  assert not [n for n in names if ".tmp" in n], names
  for stem in ("fig4", "supp1"):
    assert {f"{stem}.{s}" for s in ("png", "pdf", "npz")} & names in (
        set(), {f"{stem}.{s}" for s in ("png", "pdf", "npz")})
  if proc.returncode == 130:
    assert err.strip().splitlines()[-1] == (
        "mimictheory: interrupted; every file written so far is complete")
