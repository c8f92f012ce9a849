"""Shared benchmark plumbing: machine description, timing, results files, RESULTS.md."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, GPU, library versions, date."""
    import numpy
    import pyro
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import sklearn

        info["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    return info


def timed(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and spread (min, max) of ``repeats`` wall-clock timings, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "repeats": repeats}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true",
                   help="smallest sizes, for the smoke test (results not recorded)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/)")
    return p


def write_results(name: str, payload: dict[str, Any], table: str, out: str | None = None,
                  record: bool = True, module: str | None = None) -> Path:
    """Write ``payload`` (plus machine info and command) as JSON; regenerate RESULTS.md.
    ``module``: the benchmark module that ran, when it is not ``name``."""
    command = "python -m benchmarks." + (module or name) + " "
    payload = {"benchmark": name, "command": command +
               " ".join(sys.argv[1:]), "machine": machine(), "table": table, **payload}
    if out:
        path = Path(out)
    elif record:
        path = RESULTS_DIR / f"{name}.json"
    else:  # a smoke run (--tiny) must not overwrite the recorded results
        path = Path(tempfile.gettempdir()) / f"pyro_mm_benchmark_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if record and out is None:
        regenerate_markdown()
    print(table)
    print(f"\nresults: {path}")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def regenerate_markdown() -> None:
    """RESULTS.md = one section per results/*.json, in a fixed order."""
    order = ["classification", "missing", "baselines", "few_labels", "generative_path",
             "arm", "dpgmm", "imputation", "clustering", "overhead", "throughput", "scale",
             "lockstep", "scale_disk", "gpu"]
    files = sorted(RESULTS_DIR.glob("*.json"),
                   key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))
    parts = ["# Benchmark results",
             "",
             "Generated from `benchmarks/results/*.json` by the benchmark scripts; do not "
             "edit by hand. Rerun one with `python -m benchmarks.<name>` (or all with "
             "`python -m benchmarks.run`)."]
    for path in files:
        payload = json.loads(path.read_text())
        m = payload["machine"]
        where = (f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}"
                 + (f", GPU {m['gpu']}" if m.get("gpu") else ""))
        parts += ["", f"## {payload.get('title', payload['benchmark'])}", "",
                  f"`{payload['command'].strip()}` on {m['date']}; {where}; Python "
                  f"{m['python']}, torch {m['torch']}, pyro {m['pyro']}"
                  + (f", scikit-learn {m['scikit-learn']}" if 'scikit-learn' in m else "")
                  + ".", "", payload["table"]]
        if payload.get("notes"):
            parts += ["", payload["notes"]]
    RESULTS_MD.write_text("\n".join(parts) + "\n")


def train_mlp(x, y, x_test, seed: int, epochs: int, batch_size: int = 128,
              hidden: int = 256, num_classes: int = 10):
    """A one-hidden-layer MLP baseline (Adam, cross-entropy) trained on ``x (N, d)``
    float32 and ``y (N,)``; returns the class probabilities of ``x_test``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            optim.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            optim.step()
    with torch.no_grad():
        return torch.softmax(net(x_test), -1).numpy()
