"""Each benchmark runs end to end on tiny sizes (``--tiny``) and writes its JSON.

Slow-marked (``pytest -m slow``): they train several models each. Nothing here looks at
wall-clock time; the recorded results come from full runs (``python -m benchmarks.run``).
"""

import importlib
import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["classification", "missing", "arm", "dpgmm", "overhead",
                                  "throughput", "scale", "lockstep", "gpu",
                                  "store_checksums"])
def test_benchmark_runs_on_tiny_sizes(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    module.main(["--tiny", "--out", str(out)])
    if name == "gpu" and not torch.cuda.is_available():
        assert not out.exists()  # says so and exits without results
        return
    payload = json.loads(out.read_text())
    assert payload["rows"], payload
    assert payload["machine"]["torch"] == torch.__version__
    if name == "scale":  # its out-of-core part writes beside it
        disk = json.loads((tmp_path / "scale_disk.json").read_text())
        assert [r["where"] for r in disk["rows"]] == ["disk", "memory"]
        assert all(r["peak_rss_gb"] > 0 and r["examples_per_second"] > 0
                   for r in disk["rows"])


def test_gpu_benchmark_code_paths_run_on_the_cpu(tmp_path):
    """Where no GPU is lent, the GPU benchmark's every part (in memory, from a Zarr
    store, the data-parallel smoke run on gloo) still runs, on the CPU."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--cpu-dry-run", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["ddp_smoke"]["ok"] and payload["ddp_smoke"]["backend"] == "gloo"
    assert all(r["memory"] > 0 and r["disk"] > 0 and r["cpu"] > 0 for r in payload["rows"])
