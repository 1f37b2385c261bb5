"""Run several snptool commands in one torchrun launch, each as `python -m snptool` would.

    torchrun --standalone --nproc-per-node 2 tests/_torchrun_steps.py PLAN.json

PLAN.json is a list of {"name", "cwd", "args"}; "{rank}" in an argument becomes the rank, so
the ranks of one step can be given different flags. The process group starts with the first
step and every later step joins it, as they would in one program (one difference from separate
launches: a later step's callback un-quiets rank 1's logs; its JSON and collective errors stay
rank 0's alone). Each step's exit status and this rank's stdout and stderr (captured at the
file descriptors) go to `<name>.rank<R>.json` beside PLAN.json; the launch itself exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from snptool.cli import main


def _captured(fd: int, path: Path):
    """Send file descriptor `fd` to `path`; return the call that restores it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(path, "wb") as handle:
        os.dup2(handle.fileno(), fd)

    def restore() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)

    return restore


def run_step(step: dict, rank: str, results: Path) -> None:
    args = [arg.replace("{rank}", rank) for arg in step["args"]]
    home = os.getcwd()
    os.chdir(step["cwd"])
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch, "out"), Path(scratch, "err")
        restore_out, restore_err = _captured(1, out), _captured(2, err)
        sys.argv = ["snptool", *args]
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        finally:
            restore_err()
            restore_out()
            os.chdir(home)
        record = {"returncode": code, "stdout": out.read_text(), "stderr": err.read_text()}
    (results / f"{step['name']}.rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    plan_path = Path(sys.argv[1]).resolve()
    for step in json.loads(plan_path.read_text()):
        run_step(step, os.environ["RANK"], plan_path.parent)
