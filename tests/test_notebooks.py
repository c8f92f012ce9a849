"""Every notebook in notebooks/ runs end to end (small settings,
PYRO_MM_NOTEBOOK_SMALL=1) in a Jupyter kernel of the current interpreter."""

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "python3"

#: A call that draws a figure: ``plot_history(...)``, ``plots.plot_weights(...)``,
#: ``az.plot_khat(...)``.
DRAWS = re.compile(r"\bplot_\w+\(")


def _check_kernel() -> None:
    """The "python3" kernel must start this interpreter: ipykernel's own spec (argv
    ``python -m ipykernel_launcher``, which jupyter_client replaces by
    ``sys.executable``) or one whose argv names this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip(f"no {KERNEL!r} Jupyter kernel spec (is ipykernel installed?)")
    command = spec.argv[0]
    major, minor = sys.version_info[:2]
    if command in ("python", f"python{major}", f"python{major}.{minor}"):
        return
    if Path(command).resolve() != Path(sys.executable).resolve():
        pytest.skip(f"the {KERNEL!r} kernel spec runs {command}, not this interpreter "
                    f"({sys.executable})")


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "diagnostics.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_end_to_end(path, tmp_path, monkeypatch):
    _check_kernel()
    monkeypatch.setenv("PYRO_MM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    assert not cells_without_figures(notebook)


def cells_without_figures(notebook) -> list[str]:
    """The first line of every code cell that draws but shows no PNG in its outputs."""
    return [cell.source.splitlines()[0] for cell in notebook.cells
            if cell.cell_type == "code" and DRAWS.search(cell.source)
            and not any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_committed_notebooks_show_every_figure(path):
    """What a reader opens on the web: every cell that draws has its figure saved."""
    assert not cells_without_figures(nbformat.read(path, as_version=4))
