"""Every console script declared in pyproject.toml resolves to a ``main`` that parses ``--help`` and exits 0,
and the checkout's ``scripts/<module>.py`` runs that same ``main``."""

import importlib
import runpy
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
TOOLS = {name: target for name, target in SCRIPTS.items() if target.startswith("lit_imit.tools.")}


def test_the_daily_tools_are_installed_as_console_scripts():
    assert {"lit-imit-record", "lit-imit-visualize", "lit-imit-convert", "lit-imit-export", "lit-imit-deploy",
            "lit-imit-reproduce"} <= set(TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_console_script_prints_help_and_exits_0(name, capsys):
    module, func = TOOLS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_checkout_script_runs_the_same_main(name, monkeypatch):
    module = TOOLS[name].split(":")[0]
    script = ROOT / "scripts" / f"{module.rsplit('.', 1)[1]}.py"
    namespace = runpy.run_path(str(script), run_name="not_main")
    assert namespace["main"] is importlib.import_module(module).main
