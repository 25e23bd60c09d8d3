"""What `pip install .` installs: every package of the library and the files it reads at run
time (a wheel built from this tree holds them; an editable install would hide a gap)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_holds_every_package_and_data_file(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("jobledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(
        p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("ledger/**/__init__.py")
    )
    packages += ["projections"]
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    assert "ledger/backends/postgres/schema.sql" in names
    assert "ledger/py.typed" in names and "projections/py.typed" in names
    assert any(n.startswith("ledger/web/templates/") for n in names)
