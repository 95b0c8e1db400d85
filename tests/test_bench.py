"""The benchmark script runs end to end (its figures are for the README, not asserted here)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bench_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--steps", "30", "--repeats", "1"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if "MLP" in line]
    import importlib.util

    contenders = 4 + (importlib.util.find_spec("lightning") is not None)  # hand x2, harness x2 (+ Lightning)
    assert len(rows) == 2 * contenders
    for row in rows:
        steps_per_s = float(row.split()[-5])
        assert steps_per_s > 0
