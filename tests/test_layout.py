"""The README's Layout section and the tree agree: every folder it draws exists, every package folder is drawn."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _drawn_folders() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    folders, stack = set(), []
    for line in tree.splitlines()[1:]:
        m = re.match(r"^(?P<indent>[ │├└─]*)(?P<name>[\w.-]+/)", line)
        if not m:
            continue
        depth = len(m["indent"]) // 4
        stack[depth:] = [m["name"].rstrip("/")]
        folders.add("/".join(stack))
    return folders


def test_every_folder_the_layout_names_exists_and_every_package_is_named():
    drawn = _drawn_folders()
    assert "diffugen/generation" in drawn and "studies" in drawn
    missing = sorted(f for f in drawn if not (ROOT / f).is_dir())
    assert not missing, f"README Layout names folders that do not exist: {missing}"
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "diffugen").rglob("__init__.py")}
    undrawn = sorted(packages - drawn)
    assert not undrawn, f"packages missing from the README Layout: {undrawn}"
