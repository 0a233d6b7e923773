"""The layers of DESIGN.md and the one door per outside system hold (`make lint` runs
lint-imports with pyproject.toml's contracts), and an import that breaks one fails the lint."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = (
    "common",
    "audit",
    "identity",
    "vault",
    "targets",
    "access",
    "recordings",
    "gateway",
    "web",
    "pamsite",
)


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    """The project's packages and its lint configuration, nothing else."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_the_tree_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # The ground layer reaching up.
        ("audit/models.py", "import access.models", "Layers"),
        # The same, hidden in a function: no function-level import dodges the layers.
        ("identity/selectors.py", "def _up():\n    from recordings.models import GatewaySession", "Layers"),
        # A second door to Vault.
        ("access/views.py", "import hvac", "Only vault.client talks to Vault"),
        # A second LDAP client.
        ("identity/users.py", "import ldap", "Only identity.ldap_client talks to LDAP"),
        # Connecting to a target from outside targets/ and gateway/.
        ("access/services.py", "import asyncssh", "Only targets/, gateway/ and the SSH key parsing"),
    ],
)
def test_an_import_that_breaks_a_contract_fails_the_lint(tmp_path, module, line, broken):
    tree = _copy(tmp_path)
    with (tree / module).open("a") as f:
        f.write(f"\n\n{line}\n")
    result = _lint(tree)
    assert result.returncode != 0
    verdicts = [v for v in result.stdout.splitlines() if v.startswith(broken)]
    assert any(" BROKEN" in v for v in verdicts), result.stdout
    assert "Contracts: 5 kept, 1 broken." in result.stdout  # that one contract only


def _function_level_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, module, commented) for each import of a pamsite module inside a function."""
    found = []
    for name in PACKAGES:
        for path in sorted((ROOT / name).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        modules = [alias.name for alias in inner.names]
                    elif isinstance(inner, ast.ImportFrom) and not inner.level:
                        modules = [inner.module or ""]
                    else:
                        continue
                    for module in modules:
                        if module.split(".")[0] in PACKAGES:
                            line = lines[inner.lineno - 1]
                            commented = "#" in line
                            found.append((str(path.relative_to(ROOT)), inner.lineno, module, commented))
    return found


def test_no_function_level_import_of_a_project_module_without_a_comment_saying_why():
    """lint-imports sees function-level imports too (a layer cannot be dodged that way); this
    keeps them for the few reasons that need one (Django's app loading), each said."""
    silent = [
        f"{path}:{line} imports {module}"
        for path, line, module, commented in _function_level_imports()
        if not commented
    ]
    assert not silent, "import at the top, or say why not in a comment: " + ", ".join(silent)
