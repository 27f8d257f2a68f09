"""The file exporter never takes a standard descriptor a program has closed for a moment (CPython's
test_subprocess swaps fds 0-2 while otel-perf's export thread may open its file)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    from otel_perf.exporters.files import _JsonLinesWriter

    writer = _JsonLinesWriter("traces", sys.argv[1], None, None)
    captured = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT)
    saved = os.dup(1)
    os.close(1)                        # the program closes its stdout for a moment...
    writer.write('{"first": 1}')       # ...just when the exporter opens its file
    os.dup2(captured, 1)               # the program's stdout is back (here: a file we read)
    writer.write('{"second": 2}')
    os.dup2(saved, 1)
    print("program output")
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors")
def test_file_opened_while_stdout_is_closed_stays_off_stdout(tmp_path: Path) -> None:
    """Both lines land in the telemetry file; nothing reaches the program's stdout."""
    stdout_file = tmp_path / "stdout.txt"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out"), str(stdout_file)],
                          capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "program output\n"
    assert stdout_file.read_text(encoding="utf-8") == ""
    (telemetry,) = (tmp_path / "out").iterdir()
    lines = [json.loads(line) for line in telemetry.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"first": 1}, {"second": 2}]
