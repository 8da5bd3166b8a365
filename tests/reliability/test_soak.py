"""The soak's CI variant: ``scripts/soak.py --duration 5`` must pass its checks (exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_for_five_seconds_passes_its_checks(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "5", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    report = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, report
    for figure in ("max throughput", "held", "RSS", "p99", "bypasses", "reloads"):
        assert figure in done.stdout, report
    assert "FAIL" not in done.stdout, report
    assert done.stdout.count("PASS") == 6, report
