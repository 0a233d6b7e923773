"""The README documents every setting that pamsite reads from the environment."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme():
    settings_source = (ROOT / "pamsite" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|secret|bool|int|list|choice)\(\s*"([A-Z0-9_]+)"', settings_source))
    assert len(names) > 30
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"settings missing from README.md: {missing}"
