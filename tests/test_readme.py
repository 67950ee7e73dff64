"""What the README has a new user do, checked without a hub: the device example it has them save as
device.py in the clone passes the linter that the README's own test command runs over the clone."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_device_example_saved_in_the_clone_passes_the_test_command_s_linter(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "save this as `device.py`" in readme
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "paho" in block)
    (tmp_path / "device.py").write_text(example)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the clone's ruff settings
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "."], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
