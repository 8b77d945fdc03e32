"""Data-parallel training across processes (issue 25): two processes on 127.0.0.1
(`jax.distributed`, gloo collectives), the mesh spanning both processes' devices, train the
same steps as one process (to float32 summation order), write one run folder (process 0
writes the metrics, Orbax coordinates the checkpoints), and resume it together."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

DRIVER = textwrap.dedent("""
    import sys
    rank, port, out, epochs = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    if rank >= 0:
        from mimictheory._src import distributed
        distributed.initialize(f"127.0.0.1:{port}", 2, rank, timeout_s=20)
    import jax
    from mimictheory.train import TrainConfig, data_mesh, synthetic_data, train
    config = TrainConfig(epochs=epochs, depth=3, width=32, batch_size=32, milestones=(),
                         norm="batch_norm")  # every layer's statistics over both processes
    result = train(config, synthetic_data(256), out, mesh=data_mesh())
    print("RESULT", jax.process_count(), len(jax.devices()), result.resumed_from,
          [h["train_loss"] for h in result.history], flush=True)
""")


def _run(out, epochs, ranks):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(r), port, str(out), str(epochs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for r in ranks]
  outs = [p.communicate(timeout=240) for p in procs]
  assert [p.returncode for p in procs] == [0] * len(procs), [o[1][-3000:] for o in outs]
  results = []
  for o in outs:
    line = next(x for x in o[0].splitlines() if x.startswith("RESULT"))
    count, devices, start, losses = line.split(" ", 4)[1:]
    results.append((int(count), int(devices), int(start), json.loads(losses)))
  return results


def test_two_processes_train_as_one_and_resume_together(tmp_path):
  from mimictheory.train import TrainConfig, data_mesh, synthetic_data, train
  config = TrainConfig(epochs=3, depth=3, width=32, batch_size=32, milestones=(),
                       norm="batch_norm")  # the drivers' configuration, in this process
  reference = train(config, synthetic_data(256), tmp_path / "one", mesh=data_mesh())
  one = (1, 1, 0, [h["train_loss"] for h in reference.history])
  two = _run(tmp_path / "two", 2, [0, 1])
  for count, devices, start, losses in two:
    assert (count, devices, start) == (2, 2, 0)
    np.testing.assert_allclose(losses, one[3][:2], rtol=1e-5)
  assert two[0][3] == two[1][3]  # every process sees the same (all-reduced) losses
  metrics = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]
  again = _run(tmp_path / "two", 3, [0, 1])  # both resume from the checkpoint of epoch 2
  for count, devices, start, losses in again:
    assert start == 2 and losses[:2] == two[0][3]
    np.testing.assert_allclose(losses, one[3], rtol=1e-5)
