"""`destination="customerio"` after `pip install`: the dlt plugin entry point, checked in a fresh
virtual environment that knows nothing of this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cio_destination.emulator import Emulator

from .conftest import API_KEY, SITE_ID

REPO = Path(__file__).resolve().parent.parent

PIPELINE = textwrap.dedent(
    """
    import dlt
    import cio_destination
    from cio_destination import customerio_adapter

    people = dlt.resource(
        [{"uid": "u-1", "email": "ada@example.com"}, {"uid": "u-2", "email": "bo@example.com"}],
        name="people",
    )
    customerio_adapter(people, action="identify", identifier="uid")
    pipeline = dlt.pipeline("plugin_test", destination="customerio", pipelines_dir="pipelines")
    pipeline.run(people)
    print("imported from", cio_destination.__file__)
    print("destination", pipeline.destination.destination_name)
    """
)


def _project_copy(target: Path) -> Path:
    """What `pip install` reads of the project, copied, so its build leaves nothing here."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(
        REPO / "cio_destination",
        target / "cio_destination",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


@pytest.mark.slow
def test_destination_short_name_works_after_pip_install(tmp_path: Path, emulator: Emulator):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the machine's package index (pip's own config), as .ci/run installs the project
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(_project_copy(tmp_path / "project"))],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    (tmp_path / "run" / ".dlt").mkdir(parents=True)
    (tmp_path / "run" / "pipeline.py").write_text(PIPELINE)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("DESTINATION__")
    }
    environment.update(
        {
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "DESTINATION__CUSTOMERIO__SITE_ID": SITE_ID,
            "DESTINATION__CUSTOMERIO__API_KEY": API_KEY,
            "DESTINATION__CUSTOMERIO__TRACK_URL": emulator.url,
        }
    )
    run = subprocess.run(
        [str(python), "pipeline.py"],
        cwd=tmp_path / "run",
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"imported from {venv}" in run.stdout  # the installed package, not this checkout
    assert "destination customerio" in run.stdout
    assert sorted(p["identifiers"]["id"] for p in emulator.people) == ["u-1", "u-2"]
