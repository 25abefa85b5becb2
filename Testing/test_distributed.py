"""Multi-process training: a real `torchrun --nproc_per_node 2` on the CPU (gloo backend)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from RegisterByGenerationLib.phantoms import write_phantom_dataset
from RegisterByGenerationLib.training import load_checkpoint


def test_torchrun_two_cpu_processes_train_all_phases_in_sync(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    write_phantom_dataset(data, cases=2, seed=700, modality="mr", size=(64, 48, 16))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "RegisterByGenerationLib", "train", "all", "--data", str(data), "--out", str(run),
        "--preset", "tiny", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]

    # rank 0 alone reports and writes; both ranks trained (one step each) and stayed in sync
    assert result.stderr.count("stage2: 1 epochs in") == 1
    for phase in ("stage1", "registration", "stage2"):
        state = load_checkpoint(run / phase / "last.pt")
        assert state["world_size"] == 2
        assert state["history"][0]["replicas_in_sync"] is True
        rows = list(csv.DictReader(open(run / phase / "log.csv")))
        assert len(rows) == 1 and rows[0]["replicas_in_sync"] == "True"
    assert len([p for p in (run / "cache").iterdir() if p.suffix == ".npz"]) == 2  # preprocessed once, by rank 0
