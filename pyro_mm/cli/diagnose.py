"""``pyro-mm diagnose RUN_DIR [--out FILE.nc] [--plots DIR]``: :func:`run_diagnose`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..data.container import MultimodalData
from ..diagnostics.datatree import save_datatree, to_datatree
from ..diagnostics.plots import diagnostic_plots
from ..diagnostics.summary import summary
from ..runs.result import load
from ..runs.run_data import held_out_data


def run_diagnose(
    run_dir: str | Path,
    out: str | Path | None = None,
    plots: str | Path | None = None,
    num_samples: int = 1000,
    data: str | Path | MultimodalData | None = None,
    *,
    batch_size: int = 2048,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Diagnose a saved run: print :func:`~pyro_mm.diagnostics.summary`, optionally
    write the ArviZ tree and the figures. Returns the exit code (0).

    Args:
        run_dir: a run folder (``pyro-mm train`` or :meth:`FitResult.save`).
        out: write the :func:`~pyro_mm.diagnostics.to_datatree` tree here (``.nc``:
            netCDF via h5netcdf; ``.zarr``: Zarr).
        plots: write every applicable figure here as PNG.
        num_samples: posterior draws.
        data: the data to diagnose: a ``.npz``/``.nc`` file, a
            :class:`~pyro_mm.data.container.MultimodalData`, or ``None`` for the run's own
            held-out split (from ``data.json``).
        batch_size: examples per chunk while drawing.
        device: where to load the model.
        seed: seed of the draws.
        progress: progress bar.
    """
    result = load(run_dir, device=device)
    if data is None:
        data = held_out_data(run_dir)
    elif not isinstance(data, MultimodalData):
        data = MultimodalData.load(str(data))
    if all(m in data.modalities for m in result.model.modalities):
        data = data.select(result.model.modalities)
    tree = to_datatree(result, data, num_samples=num_samples, batch_size=batch_size,
                       seed=seed, progress=progress)
    report = summary(result, data, tree=tree)
    print(f"pyro-mm diagnose {run_dir} on {data!r}")
    print(report)
    if out is not None:
        path = save_datatree(tree, out)
        print(f"ArviZ data (xarray.DataTree): {Path(path).resolve()}")
    if plots is not None:
        if "matplotlib.pyplot" not in sys.modules:  # a command line: no display
            # matplotlib is optional and heavy: imported only when figures are asked for.
            import matplotlib

            matplotlib.use("Agg")
        made = diagnostic_plots(result, data, tree, plots)
        print(f"Figures in {Path(plots).resolve()}: {', '.join(p.name for p in made.values())}")
    return 0


__all__ = ["run_diagnose"]
