"""Each rule written once: task names in shared/task_names.py, the kick flag moved by shared/kick.py alone."""

from __future__ import annotations

import re
from pathlib import Path

from shared import task_names

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for d in ("shared", "web", "worker") for p in (ROOT / d).rglob("*.py")] + [ROOT / "celeryconfig.py"]
NAMES = {v for k, v in vars(task_names).items() if k.isupper() and isinstance(v, str)}


def test_task_names_are_written_in_one_module() -> None:
    written = {
        str(p.relative_to(ROOT)): name
        for p in CODE
        if p.name != "task_names.py"
        for name in NAMES
        if re.search(rf"[\"']{re.escape(name)}[\"']", p.read_text())
    }
    assert not written, written


def test_the_kick_flag_is_moved_by_its_own_module_only() -> None:
    # Python's side of the protocol (hold, clear, follow-up, retry, fan-out); the scripts set it in Redis.
    flag = re.compile(r"\.(set|delete)\([^)]*\b(dk|keys\.deal\([^)]*\))\.(kick|follow_up|fanout)\b")
    moved = [str(p.relative_to(ROOT)) for p in CODE if p.name != "kick.py" and flag.search(p.read_text())]
    assert not moved, moved


# Names the contract or the gate's replies fix: the deal field, and the script outcome of a quantity above the cap.
CONTRACT_NAMES = {"per_user_limit", "QUANTITY_ABOVE_LIMIT"}


def test_limit_means_a_rate_limit_only() -> None:
    """The purchase cap is ``cap`` (``per_user_limit`` in the contract), row counts are ``max_rows`` or ``batch``."""
    import ast

    found = []
    for p in CODE:
        if p.name == "limits.py":  # the rate limits' own module
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.arg):
                names = [node.arg]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            found += [
                f"{p.relative_to(ROOT)}: {n}"
                for n in names
                if n.lower() == "limit" or (n.lower().endswith("_limit") and n not in CONTRACT_NAMES)
            ]
    assert not found, found
