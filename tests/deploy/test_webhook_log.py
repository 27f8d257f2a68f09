"""deploy/alertmanager/webhook_log.py as compose runs it: a process that prints each notification."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.conftest import PYTHON, ROOT, clean_env

SCRIPT = ROOT / "deploy" / "alertmanager" / "webhook_log.py"


def _post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_webhook_log_prints_each_notification_as_one_json_line() -> None:
    """A POSTed Alertmanager notification comes out on stdout as one JSON line; bad JSON gets a 400."""
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--host", "127.0.0.1", "--port", "0"], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stderr.readline())
        assert match, "no listening line"
        port = int(match.group(1))
        notification = {"status": "firing",
                        "alerts": [{"labels": {"alertname": "OtelPerfCpuObjectiveMissed"}}]}
        assert _post(port, json.dumps(notification).encode()) == 200
        assert json.loads(proc.stdout.readline()) == notification
        assert _post(port, b"{not json") == 400
        # As PID 1 in a container SIGTERM would be ignored without a handler; it must stop the server.
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if terminate is ignored
            proc.kill()
            pytest.fail("webhook_log did not stop on SIGTERM")
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
