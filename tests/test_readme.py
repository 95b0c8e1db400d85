"""The README's Python example runs as written."""

import re

from tests.conftest import ROOT


def test_python_example_runs_and_learns():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["metrics"]["epoch"] == 30
    assert namespace["metrics"]["val/acc"] > 0.95
