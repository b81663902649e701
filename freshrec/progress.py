"""Progress lines of the long commands (build, update, rollout, eval), on stderr."""

from __future__ import annotations

import os
import sys


def log(msg: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for all
        return
    print(f"[freshrec] {msg}", file=sys.stderr, flush=True)
