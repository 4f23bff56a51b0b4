"""What every benchmark writes: NAME.json (the numbers, dated, with the machine) and NAME.md (the
table), and prints the table."""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.machine()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def write_report(out: Path, name: str, result: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """Write out/NAME.json and out/NAME.md, print the table; returns the dated result."""
    result = {"date": date.today().isoformat(), "machine": machine(), **result}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result
