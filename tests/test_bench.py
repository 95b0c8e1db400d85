"""The benchmark script runs end to end with tiny settings (its figures are for bench/README.md, not asserted
here): every workload has a row for every contender, and the checkpoint measurement is reported."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

CONTENDERS = ["hand-written loop", "harness"]  # the others run the same way; the suite has no time for them
TINY = ["--steps", "10", "--repeats", "1", "--cnn-epochs", "1", "--cnn-train-size", "128", "--cnn-val-size", "32",
        "--checkpoint-repeats", "1", "--workloads", "cnn", "--contenders", ",".join(CONTENDERS)]
WORKLOADS = ["SmallCNN, FakeData 3x32x32, DataLoader 2 workers"]  # the MLPs' workers differ only in data and model


@pytest.mark.slow
def test_bench_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), *TINY, "--tmp-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    heading, rows = table[0], table[2:]  # table[1] is the |---| line
    assert heading[:3] == ["workload", "contender", "steps/s"]
    assert [row[:2] for row in rows] == [[w, c] for w in WORKLOADS for c in CONTENDERS]
    for row in rows:
        assert len(row) == len(heading)
        assert float(row[2]) > 0, row
    assert any(line.startswith("- checkpoint: resnet18") and " MB" in line for line in lines), result.stdout
    assert any(line.startswith("- checkpoint verdict:") and "2% bar" in line for line in lines), result.stdout
    assert list(tmp_path.iterdir()) == []  # runs and checkpoints cleaned up after themselves
