"""A wheel of flashdeal carries its gate: built, installed in a fresh venv, every Lua script loaded from it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import redis

from shared.lua_scripts import SCRIPTS, lua_source

ROOT = Path(__file__).resolve().parents[2]
# Runs in the fresh venv: where its `shared` comes from, and every script read through importlib.resources.
READ_SCRIPTS = """
import json, sys
from importlib import resources
import shared
names = sys.argv[1].split(",")
print(json.dumps({"from": shared.__file__,
                  "scripts": {n: resources.files("shared").joinpath("lua", n + ".lua").read_text() for n in names}}))
"""


@pytest.mark.slow
def test_the_wheel_ships_every_gate_script(tmp_path: Path, settings) -> None:
    # Built from a copy of what git tracks: setuptools writes build/ into the tree it builds.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("flashdeal-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    # Run outside the checkout (cwd, no PYTHONPATH) so only the installed package can answer.
    read = subprocess.run(
        [str(python), "-I", "-c", READ_SCRIPTS, ",".join(SCRIPTS)], cwd=tmp_path, capture_output=True, text=True
    )
    assert read.returncode == 0, read.stderr
    got = json.loads(read.stdout)
    assert got["from"].startswith(str(env_dir)), got["from"]
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for name in SCRIPTS:
            source = got["scripts"][name]
            assert source == lua_source(name)
            # Loaded by Redis: the script compiles, as the gate registers it.
            assert client.script_load(source) == client.script_load(lua_source(name))
    finally:
        client.close()
    # And the pages travel too (read from the wheel: importing ``web`` would need Flask in the fresh venv).
    names = zipfile.ZipFile(wheel).namelist()
    assert "web/static/flashdeal.css" in names and any(n.startswith("web/templates/") for n in names)
