"""Access control lives in web/access.py alone, with no import circle through the session setup."""

from __future__ import annotations

import ast
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"


def imported_web_modules(module: str) -> set[str]:
    """The ``web.*`` modules a module of web/ imports, anywhere in its body."""
    tree = ast.parse((WEB / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("web."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("web.")}
    return found


def test_access_control_is_one_module_that_the_session_setup_does_not_import() -> None:
    assert "web.sessions" not in imported_web_modules("access")
    assert "web.access" not in imported_web_modules("sessions")
    assert not (WEB / "roles.py").exists()
    sessions = (WEB / "sessions.py").read_text()
    for name in ("def current_user_id", "def require_user", "def login_required", "def admin_required"):
        assert name not in sessions
