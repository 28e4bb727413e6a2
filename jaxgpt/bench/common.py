"""What jaxgpt bench's tasks share: where the tables and the --json records go, a timer, the machine's
description, the parsing of comma-separated integer options, and whether an optional comparison
(torch, transformers) can run."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, TextIO, Tuple

from jaxgpt.cli import CLIError
from jaxgpt.optional import available

BENCH_EXTRA = "jaxgpt[bench]"  # torch and transformers: what the comparisons need


def emit_record(opts: Dict[str, Any], record: Dict[str, Any]) -> None:
    """One measurement as a JSON line (--json): what benchmarks are compared by."""
    if opts["json"]:
        print(json.dumps(record), flush=True)


def table_stream(opts: Dict[str, Any]) -> TextIO:
    """Where the human-readable tables go: stderr when stdout carries --json records."""
    return sys.stderr if opts["json"] else sys.stdout


def int_list(key: str, value: Any, minimum: int = 1) -> List[int]:
    """"1,8" (or the tuple/int the CLI's literal parsing makes of it) -> [1, 8]."""
    items = value if isinstance(value, (tuple, list)) else str(value).split(",")
    try:
        values = [int(v) for v in items if str(v).strip()]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values) or any(isinstance(v, (bool, float)) for v in items):
        what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise CLIError(f"--{key} must be comma-separated {what}, got {value!r}")
    return values


def comparison_runs(opts: Dict[str, Any], key: str, packages: Sequence[str], rows: str) -> bool:
    """Whether the comparison that option `key` asks for runs: it is asked for and its packages
    import. A missing package is no error: one line on stderr says which rows are skipped and what
    to install, and the benchmark goes on without them."""
    if not opts[key]:
        return False
    missing = [package for package in packages if not available(package)]
    if missing:
        print(f"bench: {rows} skipped: {' and '.join(missing)} not installed "
              f"(pip install '{BENCH_EXTRA}'; or --{key}=False)", file=sys.stderr, flush=True)
        return False
    return True


def timed(fn: Callable[[], Any], repeats: int, max_seconds: float) -> Tuple[float, List[float]]:
    """Median wall time of up to `repeats` calls (at least one), stopping after max_seconds."""
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > max_seconds:
            break
    return statistics.median(times), times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible"
