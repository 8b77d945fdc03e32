"""Gram matrices on disk (`kernel_fn(..., out=folder)`, issue 25): equal to the in-memory ones,
exactly symmetric, resumable after a kill bit for bit, refusing what would corrupt them (a
folder of another computation, a second run, a full disk), recomputing what a damaged record
no longer vouches for."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mimictheory import stax
from mimictheory._src import out_of_core
from mimictheory._src import stax as stax_src

# a small tiling, so that a few hundred inputs make dozens of batches
TILE, BATCH = 32, 4 * 32 * 32
SETUP = textwrap.dedent(f"""
    import sys, time
    import numpy as np
    import mimictheory._src.stax as S
    from mimictheory import stax
    S.DISK_BATCH_ENTRIES = {BATCH}
    net = stax.mlp(6, "relu", 2.0, 0.1, "none", width=16)
    x = np.random.default_rng(0).normal(size=(int(sys.argv[2]), 7))
""")


def _net():
  return stax.mlp(6, "relu", 2.0, 0.1, "none", width=16)


def _x(n):
  return np.random.default_rng(0).normal(size=(n, 7))


@pytest.fixture
def small_batches(monkeypatch):
  monkeypatch.setattr(stax_src, "DISK_BATCH_ENTRIES", BATCH)


def _bytes(folder):
  return {f: (folder / f).read_bytes() for f in ("nngp.npy", "ntk.npy")}


def test_the_files_are_the_in_memory_kernels_exactly_symmetric(tmp_path, small_batches):
  net, x = _net(), _x(150)
  ref = net.kernel_fn(x, None)
  k = net.kernel_fn(x, None, out=tmp_path / "k", block_size=TILE)
  for name in ("nngp", "ntk"):
    on_disk = np.load(tmp_path / "k" / f"{name}.npy", mmap_mode="r")
    assert isinstance(getattr(k, name), np.memmap) and on_disk.dtype == np.float64
    np.testing.assert_allclose(on_disk, getattr(ref, name), rtol=1e-13, atol=0)
    assert np.array_equal(on_disk, on_disk.T)  # to the last bit
  np.testing.assert_array_equal(k.cov1, np.diagonal(k.nngp))
  # float32, and a cross kernel (every tile, no symmetry)
  c = net.kernel_fn(x[:40], x[40:], "ntk", out=tmp_path / "c", dtype="float32", block_size=TILE)
  assert c.dtype == np.float32 and c.shape == (40, 110)
  np.testing.assert_allclose(c, net.kernel_fn(x[:40], x[40:], "ntk"), rtol=1e-7)
  assert out_of_core.verify(tmp_path / "c") == []


def test_image_kernels_read_out_to_vectors_go_to_disk_too(tmp_path):
  """A convolutional description behind a GlobalAvgPool (every pair of positions per pair of
  images: smaller tiles) and a tanh MLP (eager, numerical): the files equal the in-memory
  kernels."""
  images = np.random.default_rng(1).normal(size=(20, 4, 4, 2))
  conv = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu(),
                     stax.GlobalAvgPool(), stax.Dense(1, W_std=1.2))
  k = conv.kernel_fn(images, None, "ntk", out=tmp_path / "conv")
  np.testing.assert_allclose(k, conv.kernel_fn(images, None, "ntk"), rtol=1e-12)
  assert np.array_equal(k, k.T)
  tanh = stax.mlp(3, "tanh", 1.5, 0.1, "none", width=16)
  x = _x(40)
  k = tanh.kernel_fn(x, None, out=tmp_path / "tanh")
  ref = tanh.kernel_fn(x, None)
  np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-10)
  np.testing.assert_allclose(k.cov1, ref.cov1, rtol=1e-12)


def test_the_command_line_writes_the_files_and_refuses_bad_options(tmp_path, capsys):
  from mimictheory.cli import main
  assert main(["kernels", "--n", "90", "--depth", "2", "--out", str(tmp_path / "d"),
               "--dtype", "float32", "--quiet"]) == 0
  assert np.load(tmp_path / "d" / "ntk.npy", mmap_mode="r").shape == (90, 90)
  x = _x(30)
  np.save(tmp_path / "x.npy", x)
  assert main(["kernels", "--data", str(tmp_path / "x.npy"), "--depth", "3", "--out",
               str(tmp_path / "n"), "--quiet"]) == 0
  import mimictheory as mt
  np.testing.assert_allclose(np.load(tmp_path / "n" / "nngp.npy"),
                             mt.kernels(x, depth=3).nngp, rtol=1e-12)
  capsys.readouterr()
  for argv, needle in [(["--dtype", "float16"], "--dtype must be one of"),
                       (["--data", "nothing.npy"], "--data must be"),
                       (["--depth", "0"], "depth"),
                       (["--n", "90", "--depth", "3"], "holds another computation")]:
    assert main(["kernels", "--out", str(tmp_path / "d"), "--quiet"] + argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_a_killed_computation_resumes_and_ends_bit_identical(tmp_path, small_batches):
  """A run killed (SIGKILL) after some batches, then run again, leaves the same bytes as an
  uninterrupted run; the second run computes only the batches not recorded."""
  n = 300  # 10 blocks a side: 55 upper tiles, 14 batches
  net, x = _net(), _x(n)
  net.kernel_fn(x, None, out=tmp_path / "whole", block_size=TILE)
  driver = SETUP + textwrap.dedent(f"""
      slow = S._tiles
      def tiles(*a, **k):
          time.sleep(0.3)
          return slow(*a, **k)
      S._tiles = tiles
      net.kernel_fn(x, None, out=sys.argv[1], block_size={TILE})
  """)
  folder = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-c", driver, str(folder), str(n)])
  record = folder / "record-0.txt"
  deadline = time.time() + 120
  while time.time() < deadline and (not record.exists() or
                                    len(record.read_text().splitlines()) < 3):
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  finished = len(out_of_core.read_records(folder))
  assert 3 <= finished < 14, finished
  net.kernel_fn(x, None, out=folder, block_size=TILE)
  assert len(out_of_core.read_records(folder)) == 14
  assert _bytes(folder) == _bytes(tmp_path / "whole")


def test_a_folder_of_another_computation_is_refused_naming_the_difference(tmp_path,
                                                                         small_batches):
  net, x = _net(), _x(64)
  net.kernel_fn(x, None, out=tmp_path, block_size=TILE)
  cases = [(dict(dtype="float32"), "dtype 'float64' there, 'float32' asked"),
           (dict(x1=_x(65)), "shape"),
           (dict(x1=_x(64) + 1.0), "parameters.x1"),
           (dict(net=stax.mlp(5, "relu", 2.0, 0.1, "none", width=16)),
            "parameters.description"),
           (dict(block_size=16), "tile 32 there, 16 asked")]
  for change, needle in cases:
    args = dict(net=net, x1=x, dtype="float64", block_size=TILE) | change
    with pytest.raises(ValueError, match=needle):
      args["net"].kernel_fn(args["x1"], None, out=tmp_path, dtype=args["dtype"],
                            block_size=args["block_size"])


def test_a_damaged_record_makes_its_batches_be_computed_again(tmp_path, small_batches):
  net, x = _net(), _x(200)
  net.kernel_fn(x, None, out=tmp_path / "ref", block_size=TILE)
  folder = tmp_path / "k"
  net.kernel_fn(x, None, out=folder, block_size=TILE)
  record = folder / "record-0.txt"
  lines = record.read_text().splitlines()
  # batch 2's line damaged (one digit changed), its values lost; the last line cut short
  lines[2] = lines[2][:-1] + ("0" if lines[2][-1] != "0" else "1")
  lines[-1] = lines[-1][:5]
  record.write_text("\n".join(lines) + "\n")
  ntk = np.load(folder / "ntk.npy", mmap_mode="r+")
  ntk[TILE:2 * TILE, 2 * TILE:3 * TILE] = 0.0  # tile (1, 2): batch 2 is tiles 8-11, (1, 2)-(1, 5)
  ntk.flush()
  del ntk
  assert 2 not in out_of_core.read_records(folder)
  net.kernel_fn(x, None, out=folder, block_size=TILE)
  assert _bytes(folder) == _bytes(tmp_path / "ref")
  # values damaged under an intact record are found by verify
  nngp = np.load(folder / "nngp.npy", mmap_mode="r+")
  nngp[5, 5] += 1.0
  nngp.flush()
  del nngp
  assert out_of_core.verify(folder) == [0]


def test_two_runs_into_one_folder_are_refused(tmp_path, small_batches):
  net, x = _net(), _x(64)
  tmp_path.mkdir(exist_ok=True)
  held = out_of_core._Lock(tmp_path / "lock-0")
  try:
    with pytest.raises(ValueError, match="being written by another run"):
      net.kernel_fn(x, None, out=tmp_path, block_size=TILE)
  finally:
    held.release()
  net.kernel_fn(x, None, out=tmp_path, block_size=TILE)  # free again: it runs


def test_a_full_disk_is_refused_before_any_work_leaving_nothing_half_written(
    tmp_path, monkeypatch, small_batches):
  net, x = _net(), _x(64)
  usage = out_of_core.shutil.disk_usage(tmp_path)
  monkeypatch.setattr(out_of_core.shutil, "disk_usage",
                      lambda p: usage._replace(free=1000))
  with pytest.raises(ValueError, match=r"needs 0\.00 GB .* 0\.00 GB free"):
    net.kernel_fn(x, None, out=tmp_path / "a", block_size=TILE)
  monkeypatch.undo()
  monkeypatch.setattr(stax_src, "DISK_BATCH_ENTRIES", BATCH)

  def full(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(out_of_core.os, "posix_fallocate", full)
  with pytest.raises(ValueError, match="No space left on device"):
    net.kernel_fn(x, None, out=tmp_path / "b", block_size=TILE)
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["lock-0"]


def test_bad_requests_are_refused_by_name(tmp_path):
  x = _x(16)
  bn = stax.serial(stax.Dense(8), stax.BatchNorm(), stax.Relu(), stax.Dense(1))
  cases = [(lambda: _net().kernel_fn(x, out=tmp_path, dtype="float16"), "dtype must be one of"),
           (lambda: bn.kernel_fn(x, out=tmp_path), "BatchNorm couples the batch"),
           (lambda: _net().kernel_fn(x, np.ones((3, 2)), out=tmp_path), "x2 must have")]
  for call, needle in cases:
    with pytest.raises(ValueError, match=needle):
      call()
  import jax
  with pytest.raises(TypeError, match="concrete values"):
    jax.jit(lambda a: _net().kernel_fn(a, out=tmp_path, get="ntk"))(x)


def _port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


DISTRIBUTED = SETUP + textwrap.dedent(f"""
    from mimictheory._src import distributed
    rank, port, delay = int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    distributed.initialize(f"127.0.0.1:{{port}}", 2, rank, timeout_s=10)
    slow = S._tiles
    def tiles(*a, **k):
        time.sleep(delay)
        return slow(*a, **k)
    S._tiles = tiles
    net.kernel_fn(x, None, out=sys.argv[1], block_size={TILE})
    print("done", rank, flush=True)
""")


def _launch(folder, n, delay):
  port = str(_port())
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return [subprocess.Popen([sys.executable, "-c", DISTRIBUTED, str(folder), str(n), str(rank),
                            port, str(delay)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def test_two_processes_write_the_single_process_files(tmp_path, small_batches):
  """jax.distributed on 127.0.0.1, gloo collectives: the batches are divided between the two
  processes (each records its own), and the files equal one process's bit for bit."""
  n = 300
  _net().kernel_fn(_x(n), None, out=tmp_path / "one", block_size=TILE)
  procs = _launch(tmp_path / "two", n, 0.0)
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  records = [len((tmp_path / "two" / f"record-{r}.txt").read_text().splitlines())
             for r in (0, 1)]
  assert sorted(records) == [7, 7], records  # 14 batches, round-robin
  assert _bytes(tmp_path / "two") == _bytes(tmp_path / "one")


@pytest.mark.slow
def test_one_process_dying_stops_the_other_and_both_resume(tmp_path, small_batches):
  """Process 1 killed mid-run: process 0 stops with JAX's message (heartbeat timeout), not a
  hang; both run again and finish what is left, bit for bit."""
  n = 300
  _net().kernel_fn(_x(n), None, out=tmp_path / "one", block_size=TILE)
  folder = tmp_path / "killed"
  procs = _launch(folder, n, 0.3)
  record = folder / "record-1.txt"
  deadline = time.time() + 120
  while time.time() < deadline and (not record.exists() or
                                    len(record.read_text().splitlines()) < 2):
    time.sleep(0.02)
  procs[1].kill()
  start = time.time()
  err = procs[0].communicate(timeout=60)[1]
  procs[1].communicate()
  assert procs[0].returncode != 0 and time.time() - start < 45
  assert "another task died" in err or "heartbeat" in err, err[-2000:]
  left = 14 - len(out_of_core.read_records(folder))
  assert left > 0
  procs = _launch(folder, n, 0.0)
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  assert _bytes(folder) == _bytes(tmp_path / "one")
