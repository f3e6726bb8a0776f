"""Shared by the benchmarks: timing statistics, the machine's description, BENCHMARKS.md output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

_HEADER = """# Benchmarks

Appended by the scripts in `bench/` (`.venv/bin/python bench/NAME.py`); newest last. Each script
measures LocalCat and the raw library it builds on side by side in one run and reports the ratio,
because these machines are shared and noisy: compare ratios, not absolute times, across entries.
Retrieval quality (`localcat eval`, `bench/tune_retrieval.py`) is reported in its own sections.
"""


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def p50(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))) / 2**20
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        mem, load = 0.0, ["?"] * 3
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, load avg {' '.join(load)}")


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def append(title: str, body: str, *, write: bool = True) -> None:
    """Print a section and append it to BENCHMARKS.md with the date and the machine."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{body.strip()}\n"
    print(section)
    if write:
        if not BENCHMARKS_MD.exists():
            BENCHMARKS_MD.write_text(_HEADER)
        with BENCHMARKS_MD.open("a", encoding="utf-8") as f:
            f.write(section)


def verdict(value: float, target: float, *, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "**misses target**"


def materialise(corpus: Path, out: Path, n: int) -> Path:
    """A folder of documents: the given one, or the first n documents of a BEIR corpus.jsonl."""
    if not (corpus / "corpus.jsonl").is_file():
        return corpus
    out.mkdir(parents=True, exist_ok=True)
    with (corpus / "corpus.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == n:
                break
            d = json.loads(line)
            body = f"{d['title']}\n\n{d['text']}" if d.get("title") else d["text"]
            (out / f"doc{i:05d}.txt").write_text(body, encoding="utf-8")
    return out
