"""The standing hostile-input suite: every reader of outside data, fuzzed within a
time budget, in a child process with a memory ceiling.

A few seconds each in CI; ``FERRY_FUZZ_SECONDS=300`` for a long run. A failure prints
the seed: ``python -m tests.fuzzing KIND SECONDS SEED`` replays it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from tests.fuzzing import AT_LEAST, FUZZERS

SECONDS = float(os.environ.get("FERRY_FUZZ_SECONDS", "4"))
MEMORY = 1536 << 20  # address space on top of the interpreter's own


def _limit_memory() -> None:
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY, size + MEMORY))


@pytest.mark.parametrize("kind", sorted(FUZZERS))
def test_fuzz(kind: str) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzzing", kind, str(SECONDS), str(seed)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory,
        timeout=SECONDS * 4 + 120,
    )
    assert run.returncode == 0, f"seed {seed}:\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout)
    print(f"fuzz {kind}: {report['inputs']} inputs in {SECONDS:g}s (seed {seed})")
    assert report["inputs"] >= AT_LEAST  # every fuzzer's loop ran, whatever the time
