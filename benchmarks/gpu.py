"""GPU throughput: training examples per second on CUDA against the CPU.

Batch 1,024 and 8,192 on mfeat (2,000 examples, six views) and on 100,000 synthetic
examples (two modalities); each timed over whole epochs after one warm-up epoch, in the
same run on both devices, with the device name recorded. Without CUDA the script says so
and exits cleanly (status 0) without touching the recorded results.

    python -m benchmarks.gpu [--tiny] [--epochs 3]
"""

from __future__ import annotations

import time

import pyro
import torch

import pyro_mm as pm

from .common import markdown_table, parser, write_results


def throughput(data, device: str, batch_size: int, epochs: int) -> float:
    """Examples per second of ``pm.fit`` over ``epochs`` epochs (after a warm-up epoch)."""
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes, latent_dim=16,
                                   num_components=20)
    result = pm.fit(model, data, num_epochs=1, batch_size=batch_size, device=device,
                    progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pm.fit(result.model, data, guide=result.guide, num_epochs=epochs,
           batch_size=batch_size, device=device, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return epochs * len(data) / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device here; nothing to measure (results unchanged).")
        return 0
    name = torch.cuda.get_device_name(0)
    sets = {"mfeat (2,000 x 6 views)": pm.datasets.load_mfeat(),
            "synthetic (100,000 x 2 modalities)": pm.datasets.make_synthetic(
                num_examples=2000 if args.tiny else 100_000, num_clusters=8,
                dims={"a": 64, "b": 32}, seed=0)}
    epochs = 1 if args.tiny else args.epochs
    rows, raw = [], []
    for label, data in sets.items():
        for batch_size in (1024, 8192):
            gpu = throughput(data, "cuda", batch_size, epochs)
            cpu = throughput(data, "cpu", batch_size, 1 if len(data) > 10_000 else epochs)
            raw.append({"data": label, "batch_size": batch_size, "gpu": gpu, "cpu": cpu})
            rows.append([label, batch_size, f"{gpu:,.0f}", f"{cpu:,.0f}", f"{gpu / cpu:.1f}x"])
            print(rows[-1], flush=True)
    table = markdown_table(["data", "batch", f"examples/s on {name}", "examples/s on CPU",
                            "GPU / CPU"], rows)
    write_results("gpu", {"title": "GPU training throughput", "device": name, "rows": raw},
                  table, args.out, record=not args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
