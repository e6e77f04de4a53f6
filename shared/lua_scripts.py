"""The Lua scripts of the gate and the waiting room, shipped as package data (``shared/lua/``)."""

from __future__ import annotations

from importlib import resources

SCRIPTS = ("admit", "cancel", "load_deal", "queue", "retire", "settle")


def lua_source(name: str) -> str:
    """The source of one script (``SCRIPTS``), read from the installed package."""
    return resources.files("shared").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
