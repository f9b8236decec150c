"""README's Python example runs as written (with one epoch instead of five), so the
documentation cannot drift from the API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)


def test_readme_python_example_runs_and_exports(tmp_path):
    code = readme_example()
    assert "epochs=5" in code
    (tmp_path / "example.py").write_text(code.replace("epochs=5", "epochs=1"))
    proc = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "runs" / "api_pooling"
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 36 and (rows["status"] == "ok").all()
    assert (out / "selected" / "0023_4-3-3" / "model.json").is_file()  # result.export("4,3,3")
    front = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert front and len(front) == len(list((out / "exports").iterdir()))
