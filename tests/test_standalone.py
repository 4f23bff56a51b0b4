"""The repository stands alone: nothing its tests, benchmarks, demo or CI need lies outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The same search as the standalone issue's grep (the word "shared" then a slash, in *.py, *.ini, *.toml
# and files named run): it must find no path outside the repository.
PATTERN = re.compile("shared" + "/")
SUFFIXES = {".py", ".ini", ".toml"}


def _searched_files() -> list[Path]:
    skip = {".git", ".tox", ".venv", "build", "dist", "node_modules", ".hypothesis", ".pytest_cache"}
    out = []
    for path in ROOT.rglob("*"):
        if any(part in skip for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name == "run"):
            out.append(path)
    return out


def test_no_file_reads_a_folder_beside_the_repository() -> None:
    files = _searched_files()
    assert any(p.name == "run" for p in files) and len(files) > 50  # the search really looked
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if PATTERN.search(line)
    ]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_the_openai_schemas_are_the_projects_own_copy() -> None:
    from tests.api.schemas import SCHEMAS

    assert SCHEMAS.is_file() and ROOT in SCHEMAS.resolve().parents
