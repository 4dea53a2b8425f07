"""The package works installed from a wheel, not only from a source checkout: the container image
runs `attribution` from site-packages, where there is no `topics/` folder beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installed_in_a_fresh_venv_validates_settings_and_runs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "attribution",
        source / "attribution",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_compiled.py"),
    )
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)], tmp_path
    )
    wheel = next(dist.glob("attribution-*.whl"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path)

    # a directory with no checkout in sight, and no ATTRIBUTION_* from the test run
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRIBUTION_", "PYTHON"))}
    settings = workdir / "shop.json"
    shutil.copy(REPO / "topics" / "examples" / "settings" / "shop_kr.json", settings)
    exe = str(env_dir / "bin" / "attribution")
    done = _run([exe, "settings", "validate", str(settings)], workdir, env)
    assert "shop-kr v3: 2 conversion events ok" in done.stdout
    location = _run(
        [str(env_dir / "bin" / "python"), "-c", "import attribution; print(attribution.__file__)"],
        workdir,
        env,
    )
    assert str(env_dir) in location.stdout  # the installed copy, not the checkout
    build = _run(  # the wheel (as the image builds it) carries the mypyc-compiled hot path
        [str(env_dir / "bin" / "python"), "-c", "import attribution.compiled as c; print(c.BUILD)"],
        workdir,
        env,
    )
    assert build.stdout.strip() == "mypyc", build.stdout
    help_text = _run([exe, "worker", "--help"], workdir, env).stdout
    assert "worker" in help_text
