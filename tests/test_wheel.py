"""The wheel holds every file of the package: a data file left out of it (the footer's wording
once was) breaks `mailer send` only for people who installed with `pip install .`, never
for the editable install the other tests run on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_files() -> set[str]:
    """Every file under mailer/ the code may read, as the wheel names it (through the sample's
    link to the footer too, which the wheel holds as copies)."""
    found = set()
    for folder, dirs, files in os.walk(ROOT / "mailer", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".pyc"):
                found.add((Path(folder) / name).relative_to(ROOT).as_posix())
    return found


def build_wheel(tmp_path: Path) -> Path:
    """Built from a copy, so that setuptools' build/ and egg-info stay out of the checkout;
    without build isolation, so that it works offline with the test venv's setuptools."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "mailer", source / "mailer", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("mailer-*.whl")
    return wheel


def test_the_wheel_holds_every_file_under_mailer(tmp_path: Path) -> None:
    expected = package_files()
    assert "mailer/footer/footer.html.j2" in expected and "mailer/py.typed" in expected
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "\nmailer = " in wheel.read(entry_points).decode()  # the console script
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (see [tool.setuptools.package-data] in pyproject.toml): {missing}"
    assert [n for n in names if "__pycache__" in n or n.endswith(".pyc")] == []
