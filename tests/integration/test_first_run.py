"""The README's run command on a clean copy: no authsvc warning before "listening".

``bash deploy/run.sh`` installs authsvc into a new ``.venv`` of a copy of the
source tree (no ``.git``, no venv: what a fresh clone has), checks the shipped
example for ``serve`` only, shows where Bob goes, prints the ``curl`` line to
try, and runs ``authsvc serve``.  Every line authsvc writes before serve says
``event=listening`` must be free of warnings (pip's own ``WARNING:`` and
``[notice]`` lines are pip's), and the printed ``curl`` line, run as printed,
gets Bob's route.

The run is given ``--listen`` on a free port (run.sh hands its arguments to
serve); the curl line is run against that port.  It needs the package index,
as the wheel test does: unreachable, it skips locally and fails under CI=true.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_wheel import ROOT, SKIPPED, _index_reachable
from tests.services.ports import free_port
from tests.services.require import require, require_binary

pytestmark = pytest.mark.integration

#: What a warning looks like in each of authsvc's outputs (check-config's
#: "file:line: key: ..." lines are counted by its own summary line).
WARNING = re.compile(r"level=warning|authsvc: warning:|[1-9]\d* warning\(s\)")
#: pip's own lines (``pip install -q`` still prints these).
PIP = re.compile(r"\s*(WARNING:|\[notice\])")


def test_run_sh_prints_no_warning_and_the_curl_line_works(tmp_path: Path) -> None:
    curl = require_binary("curl")
    require(_index_reachable(tmp_path / "probe"), "the package index is unreachable")
    source = tmp_path / "clone"
    shutil.copytree(ROOT, source, ignore=SKIPPED)
    port = free_port()
    output = tmp_path / "run.out"
    with output.open("wb") as out:
        run = subprocess.Popen(["bash", "deploy/run.sh", "--listen", f"127.0.0.1:{port}"],
                               cwd=source, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "event=listening" not in output.read_text(errors="replace"):
            assert run.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.2)
        text = output.read_text(errors="replace")
        before = text[:text.index("event=listening")].splitlines()
        ours = [line for line in before if not PIP.match(line)]
        assert not [line for line in ours if WARNING.search(line)], text
        assert "ok: 4 listeners, 0 warning(s)" in text
        printed = [line.strip() for line in before if line.strip().startswith("curl ")]
        assert len(printed) == 1, text
        args = shlex.split(printed[0].replace(":9143/", f":{port}/"))
        answer = subprocess.run([curl, "-sS", *args[1:]], capture_output=True, text=True,
                                timeout=30, check=False)
        assert "Auth-Status: OK" in answer.stdout, answer
        assert re.search(r"Auth-Server: 127\.0\.0\.\d+", answer.stdout), answer.stdout
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(30)
