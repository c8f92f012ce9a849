"""Command line: ``pyro-mm train``, ``evaluate``, ``impute`` and ``diagnose``.

Examples::

    pyro-mm train                                   # mfeat, all six views
    pyro-mm train --views fou pix --epochs 20 --out runs/two-views
    pyro-mm train --dataset synthetic --mixture independent
    pyro-mm train --data mine.npz --components 10   # arrays by modality, optional labels
    pyro-mm train --data big.zarr --num-workers 2    # a Zarr store, read from disk
    pyro-mm train --views fou mor --factor arm:weight=0.1 --factor pmrl
    pyro-mm train --resume runs/two-views --epochs 40   # continue a stopped run
    pyro-mm train --nproc 2 --out runs/ddp              # data-parallel, via torchrun
    torchrun --nproc_per_node=2 -m pyro_mm.cli.main train --out runs/ddp   # the same
    pyro-mm evaluate runs/two-views --data test.nc --contributions
    pyro-mm impute runs/two-views --data gaps.nc --out imputed.nc --quantiles 0.05 0.95
    pyro-mm diagnose runs/two-views --out runs/two-views/posterior.nc --plots figs
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyro
import torch.distributed as dist

from ..data.container import MultimodalData
from ..errors import (CheckpointError, DataValidationError, DistributedError,
                      TrainingDivergedError)
from ..factors import FACTORS, make_factor, modality_contributions
from ..model.dp_mixture import MultimodalDPMixture
from ..model.factor_protocol import factor_config
from ..predictive.impute import impute
from ..predictive.predict import evaluate
from ..runs import load
from ..runs.checkpoint import read_json
from ..runs.run_data import data_source, held_out_data, load_dataset, run_splits
from ..runtime import distributed
from ..train import fit
from .diagnose import run_diagnose


def _defaults(function) -> dict:
    """``argument -> default`` of ``function``'s signature: the command line's defaults
    are the Python API's, never a second copy of them."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


MODEL = _defaults(MultimodalDPMixture.__init__)
FIT = _defaults(fit)
SPLIT = _defaults(MultimodalData.split)
LOAD = _defaults(load)
IMPUTE = _defaults(impute)
DIAGNOSE = _defaults(run_diagnose)

# Every import points down and is at the top: ``pyro_mm/__init__`` imports the whole
# package anyway, so deferring them would not make the command start faster.


def parse_factor(spec: str):
    """``"pmrl"`` or ``"arm:weight=0.5,reinforce=1"`` -> a factor object."""
    kind, _, rest = spec.partition(":")
    if kind not in FACTORS:
        raise ValueError(f"--factor {spec!r}: unknown kind {kind!r}; choose from "
                         f"{sorted(FACTORS)}")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"--factor {spec!r}: expected key=value, got {item!r}")
        kwargs[key.strip()] = _parse_value(text.strip())
    try:
        return make_factor({"kind": kind, **kwargs})
    except TypeError as exc:
        raise ValueError(f"--factor {spec!r}: {exc}") from exc


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _format_metrics(metrics: dict) -> str:
    names = {"accuracy": "held-out accuracy",
             "log_likelihood": "held-out log-likelihood (nats/example)",
             "ari": "adjusted Rand index (components vs labels)",
             "effective_components": "effective number of components",
             "num_examples": "examples evaluated"}
    width = max(len(v) for v in names.values())
    lines = []
    for key, label in names.items():
        if key in metrics:
            value = metrics[key]
            text = f"{int(value)}" if key == "num_examples" else f"{value:.4f}"
            lines.append(f"  {label:<{width}}  {text}")
    return "\n".join(lines)


def _train(args) -> int:
    """``pyro-mm train``: a new run, or ``--resume`` one; with ``--nproc K`` relaunched
    under ``torchrun``, and under ``torchrun`` one rank of a data-parallel run."""
    if args.new_data and not args.resume:
        raise ValueError("--new-data: only with --resume (a new run trains on its data)")
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return _launch(args)
    owned = not (dist.is_available() and dist.is_initialized())
    owned = distributed.init_from_env() and owned
    try:
        group = distributed.resolve(None)
        say = print if group is None or group.is_writer else (lambda *a, **k: None)
        return _resume(args, say) if args.resume else _train_new(args, group, say)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _launch(args) -> int:
    """Run this same command as ``torchrun --standalone --nproc_per_node=K``; the
    workers import this same ``pyro_mm`` and write one run folder."""
    argv, skip = [], False
    for item in args.argv:
        if skip or item.startswith("--nproc="):
            skip = False
        elif item == "--nproc":
            skip = True
        else:
            argv.append(item)
    if not (args.out or args.resume):  # one folder name for every rank
        argv += ["--out", _default_out(args)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", "-m", "pyro_mm.cli.main", *argv]
    return subprocess.run(command, env=env, check=False).returncode


def _default_out(args) -> str:
    name = args.data and Path(args.data).stem or args.dataset
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _train_new(args, group, say) -> int:
    data = load_dataset(args)
    train, test = data.split(test_fraction=args.test_fraction, seed=args.seed,
                             stratify=data.labels is not None)
    num_classes = data.num_classes if (data.has_labels and not args.unsupervised) else None
    pyro.set_rng_seed(args.seed)  # network weights are drawn when the model is built
    model = MultimodalDPMixture(
        train.dims, num_classes=num_classes, latent_dim=args.latent_dim,
        num_components=args.components, mixture=args.mixture, component=args.component,
        rank=args.rank, resolution_floor=args.resolution_floor,
        representation=args.representation, fusion=args.fusion,
        alpha="learned" if args.alpha == "learned" else float(args.alpha),
        hidden=tuple(args.hidden), classifier_prior_scale=args.classifier_prior_scale,
        experts_pool=args.experts_pool, factors=[parse_factor(spec) for spec in args.factor],
    )
    out = Path(args.out or distributed.broadcast_object(group, _default_out(args)))
    say(f"pyro-mm: {data!r}")
    say(f"  train {len(train)} / test {len(test)} examples; modalities "
        f"{', '.join(f'{k} ({d})' for k, d in train.dims.items())}")
    started = time.perf_counter()
    # data.json is written by fit with every checkpoint, under the folder's lock.
    # The test split is only reported on: with the package's training length it must not
    # choose when to stop (fit then stops on an internal split of the training rows).
    num_epochs = args.epochs or FIT["num_epochs"]
    result = fit(model, train, num_epochs=num_epochs, batch_size=args.batch_size,
                 learning_rate=args.lr, device=args.device, seed=args.seed,
                 val_data=_monitored(num_epochs, test), metrics_data=test,
                 early_stopping=args.early_stopping, run_dir=out, progress=not args.quiet,
                 num_workers=args.num_workers, disk_order=args.disk_order,
                 overwrite=args.overwrite, data_source=_data_source(args, data))
    _report(result, time.perf_counter() - started, out, say)
    return 0


def _monitored(num_epochs, test: MultimodalData) -> MultimodalData | None:
    """``fit``'s ``val_data``: the test split, watched after every epoch, when the
    number of epochs is fixed; ``None`` (an internal split stops training) when the
    package chooses it."""
    return test if num_epochs is not None else None


def _data_source(args, data: MultimodalData) -> dict:
    """The run folder's ``data.json``: how :func:`run_splits` rebuilds the split."""
    return {"dataset": args.dataset, "data": _data_path(args, data),
            "data_format": "zarr" if data.on_disk else "file", "views": args.views,
            "seed": args.seed, "test_fraction": args.test_fraction}


def _data_path(args, data: MultimodalData) -> str | None:
    """The data file as ``data.json`` records it: a store by its absolute path, so that
    evaluate, diagnose and resume reopen it from any working directory."""
    return str(Path(args.data).resolve()) if data.on_disk else args.data


#: Fit arguments a resumed run takes from the run folder's ``config.json``.
RESUMED = ("batch_size", "learning_rate", "clip_norm", "lr_decay", "seed", "early_stopping",
           "kl_warmup_epochs", "num_particles", "elbo")

#: ``pyro-mm train`` options -> the model configuration key a resumed run must match.
MODEL_OPTIONS = {"latent_dim": "latent_dim", "components": "num_components",
                 "component": "component", "rank": "rank",
                 "resolution_floor": "resolution_floor",
                 "mixture": "mixture", "representation": "representation",
                 "fusion": "fusion", "hidden": "hidden", "experts_pool": "experts_pool",
                 "classifier_prior_scale": "classifier_prior_scale", "alpha": "alpha",
                 "factor": "factors"}
#: ... -> the fit configuration key a resumed run must match.
FIT_OPTIONS = {"batch_size": "batch_size", "lr": "learning_rate", "seed": "seed",
               "early_stopping": "early_stopping"}
#: Options that name the data: a resumed run checks it against the run's fingerprint.
DATA_OPTIONS = ("data", "dataset", "views", "test_fraction")
#: Options a resumed run may change.
FREE_OPTIONS = ("epochs", "device", "quiet", "num_workers", "disk_order", "resume", "nproc",
                "new_data")


def _given_options(argv: list[str]) -> dict:
    """The ``pyro-mm train`` options written on the command line (abbreviated or not),
    with their values: parsed again with every default suppressed."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    train = sub.choices["train"]
    for action in train._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return {k: v for k, v in given.items() if k not in ("command", "func")}


def _model_option(dest: str, value):
    """A command-line value as the model's configuration writes it."""
    if dest == "alpha":
        return value if value == "learned" else float(value)
    if dest == "factor":
        return [factor_config(parse_factor(spec)) for spec in value]
    return list(value) if dest == "hidden" else value


def _option_conflicts(given: dict, config: dict, out: Path) -> list[str]:
    """Options given with ``--resume`` that differ from the run's, by name."""
    flag = {k: "--" + k.replace("_", "-") for k in given}
    differ = []
    for dest, value in given.items():
        if dest in MODEL_OPTIONS:
            recorded, value = config["model"].get(MODEL_OPTIONS[dest]), _model_option(
                dest, value)
        elif dest in FIT_OPTIONS:
            recorded = config["fit"].get(FIT_OPTIONS[dest])
        elif dest == "unsupervised":
            if config["model"].get("num_classes") is not None:
                differ.append(f"{flag[dest]}: the run is supervised "
                              f"({config['model']['num_classes']} classes)")
            continue
        elif dest == "out":
            if Path(value).resolve() != out.resolve():
                differ.append(f"--out {value}: a resumed run writes into its own folder "
                              f"{out}")
            continue
        elif dest == "overwrite":
            differ.append("--overwrite: a resumed run continues its folder, it does not "
                          "replace it")
            continue
        elif dest in DATA_OPTIONS or dest in FREE_OPTIONS:
            continue
        else:
            differ.append(f"{flag[dest]}: cannot be changed when resuming")
            continue
        if json.loads(json.dumps(value)) != recorded:
            differ.append(f"{flag[dest]} {value!r}: the run's is {recorded!r}")
    return differ


def _resumed_data(args, given: dict, out: Path):
    """The training and held-out splits a resumed run continues on and the
    ``data.json`` it records: the run's own, or those the data options name (which
    fit then compares with the run's fingerprint, unless ``--new-data``)."""
    spec = data_source(out)
    named = {k: given[k] for k in DATA_OPTIONS if k in given}
    if not named:
        if args.new_data:
            raise ValueError("--new-data: name the new data with --data (or --dataset, "
                             "--views, --test-fraction)")
        return (*run_splits(out), None)
    if spec is None:  # trained in Python: the split is the command line's
        spec = {"dataset": args.dataset, "data": None, "views": args.views,
                "seed": args.seed, "test_fraction": args.test_fraction}
    spec = {**spec, **named}
    if "data" in named or "dataset" in named:
        spec["data"] = named.get("data")
        spec["dataset"] = named.get("dataset", args.dataset)
    data = load_dataset(SimpleNamespace(**spec))
    spec.update(data=_data_path(SimpleNamespace(data=spec["data"]), data),
                data_format="zarr" if data.on_disk else "file")
    train, test = data.split(test_fraction=spec["test_fraction"], seed=spec["seed"],
                             stratify=data.labels is not None)
    return train, test, spec


def _resume(args, say) -> int:
    """Continue the run in ``args.resume`` from its last checkpoint, with its own data
    split, model and fit arguments, up to ``--epochs`` (default: its own number).
    Options that differ from the run's are refused by name; data named by the data
    options must be the run's (its fingerprint) unless ``--new-data``."""
    out = Path(args.resume)
    config = read_json(out / "config.json")
    given = _given_options(args.argv)
    differ = _option_conflicts(given, config, out)
    if differ:
        raise ValueError(f"--resume {out}: " + "; ".join(differ) + ". A resumed run "
                         "keeps the model and settings it was started with; start a new "
                         "run (--out) to change them")
    train, test, source = _resumed_data(args, given, out)
    fit_config = config["fit"]
    model = MultimodalDPMixture.from_config(config["model"])
    say(f"pyro-mm: resuming {out} ({train!r})")
    started = time.perf_counter()
    num_epochs = args.epochs or fit_config["num_epochs"]
    result = fit(model, train, num_epochs=num_epochs, device=args.device,
                 val_data=_monitored(num_epochs, test), metrics_data=test,
                 run_dir=out, resume_from=out,
                 progress=not args.quiet, num_workers=args.num_workers,
                 disk_order=args.disk_order, new_data=args.new_data, data_source=source,
                 **{k: fit_config[k] for k in RESUMED})
    _report(result, time.perf_counter() - started, out, say)
    return 0


def _report(result, seconds: float, out: Path, say) -> None:
    epochs = result.history.epochs
    say(f"\nTrained {len(epochs)} epochs in {seconds:.1f} s "
        f"({seconds / max(len(epochs), 1):.2f} s/epoch) on {result.config['device']}")
    say(f"  final training loss (negative ELBO per example)  {epochs[-1]['loss']:.2f}")
    say(_format_metrics(result.metrics))
    say(f"Run folder: {out.resolve()}  (config.json, metrics.json, history.json, "
        "checkpoint.pt, data.json)")


def _evaluate(args) -> int:
    result = load(args.run_dir, device=args.device)
    data = MultimodalData.load(args.data) if args.data else held_out_data(args.run_dir)
    missing = [m for m in result.model.modalities if m not in data.modalities]
    if not missing:
        data = data.select(result.model.modalities)
    metrics = evaluate(result, data)
    print(f"pyro-mm evaluate {args.run_dir} on {data!r}")
    print(_format_metrics(metrics))
    if args.contributions:
        contributions = modality_contributions(result, data)
        print(contributions)
        metrics["contributions"] = contributions.to_dict()
    if args.json:
        print(json.dumps(metrics))
    return 0


def _impute(args) -> int:
    result = load(args.run_dir, device=args.device)
    data = MultimodalData.load(args.data)
    if all(m in data.modalities for m in result.model.modalities):
        data = data.select(result.model.modalities)
    started = time.perf_counter()
    imputed = impute(result, data, num_samples=args.num_samples,
                     quantiles=args.quantiles, seed=args.seed)
    seconds = time.perf_counter() - started
    imputed.to_netcdf(args.out)
    cells = {m: int(imputed[f"{m}_missing"].sum()) for m in result.model.modalities}
    print(f"pyro-mm impute {args.run_dir} on {data!r}: missing cells {cells}; "
          f"{seconds:.1f} s; wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mm", description="Multimodal Dirichlet-process mixtures in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fit a model and write a run folder")
    train.add_argument("--dataset", choices=["mfeat", "synthetic"], default="mfeat",
                       help="bundled data set (default: mfeat)")
    train.add_argument("--data", help="your own data: .npz (arrays by modality, optional "
                                      "'labels', '<name>_mask'), .nc (xarray) or a Zarr "
                                      "store written by MultimodalData.to_zarr (read "
                                      "from disk, never whole)")
    train.add_argument("--num-workers", type=int, default=FIT["num_workers"],
                       help="processes reading minibatches of a Zarr store (default: "
                            "%(default)s)")
    train.add_argument("--disk-order", choices=["random", "chunks"],
                       default=FIT["disk_order"],
                       help="minibatches of a Zarr store: uniform draws as in memory, or "
                            "from few chunks at a time (stores much larger than memory)")
    train.add_argument("--views", nargs="+", help="modalities to use (default: all)")
    train.add_argument("--epochs", type=int, default=FIT["num_epochs"],
                       help="total epochs (default: chosen by the package: about 4,000 steps "
                            "whatever the data set's size, stopped early on the held-out "
                            "ELBO, the best epoch kept; a resumed run: its own number)")
    train.add_argument("--batch-size", type=int, default=FIT["batch_size"],
                       help="examples per step (default: %(default)s)")
    train.add_argument("--lr", type=float, default=FIT["learning_rate"],
                       help="learning rate (default: %(default)s)")
    train.add_argument("--components", type=int, default=MODEL["num_components"],
                       help="truncation level K (default: %(default)s)")
    train.add_argument("--component", choices=["normal", "studentt", "factor"],
                       default=MODEL["component"],
                       help="the mixture's component family (studentt: heavy tails; "
                            "factor: low-rank-plus-diagonal covariances, observed "
                            "features only)")
    train.add_argument("--rank", type=int, default=MODEL["rank"],
                       help="factors per component with --component factor (default: "
                            "%(default)s)")
    train.add_argument("--resolution-floor", action=argparse.BooleanOptionalAction,
                       default=MODEL["resolution_floor"],
                       help="add the features' recording resolution to the component "
                            "variances (default: for data in memory)")
    train.add_argument("--latent-dim", type=int, default=MODEL["latent_dim"],
                       help="size of each modality's representation (default: %(default)s)")
    train.add_argument("--mixture", choices=["joint", "independent"],
                       default=MODEL["mixture"])
    train.add_argument("--representation", choices=["latent", "observed"],
                       default=MODEL["representation"])
    train.add_argument("--fusion", choices=["concat", "dp", "experts"],
                       default=MODEL["fusion"],
                       help="experts: one head per view, for data with views often missing")
    train.add_argument("--hidden", type=int, nargs="*", default=list(MODEL["hidden"]),
                       metavar="H",
                       help="hidden sizes of the decoders and classifier heads (default: "
                            "%(default)s; none: linear heads)")
    train.add_argument("--classifier-prior-scale", type=float,
                       default=MODEL["classifier_prior_scale"], metavar="SD",
                       help="Normal(0, SD) prior on the classifier's weights (default: "
                            "%(default)s)")
    train.add_argument("--experts-pool", choices=["product", "mean"],
                       default=MODEL["experts_pool"],
                       help="--fusion experts: multiply the heads (independent views) or "
                            "average their log-probabilities (redundant views)")
    train.add_argument("--alpha", default=str(MODEL["alpha"]),
                       help="DP concentration or 'learned' (default: %(default)s)")
    train.add_argument("--unsupervised", action="store_true", help="ignore labels")
    train.add_argument("--factor", action="append", default=[], metavar="KIND[:K=V,...]",
                       help="auxiliary factor, repeatable: pmrl, arm, "
                            "e.g. --factor arm:weight=0.1 --factor pmrl")
    train.add_argument("--test-fraction", type=float, default=SPLIT["test_fraction"],
                       help="share of the examples held out as the test split "
                            "(default: %(default)s)")
    train.add_argument("--early-stopping", type=int, default=FIT["early_stopping"],
                       metavar="PATIENCE")
    train.add_argument("--device", default=FIT["device"], help="auto, cpu or cuda")
    train.add_argument("--out", help="run folder (default: runs/<dataset>-<time>)")
    train.add_argument("--seed", type=int, default=FIT["seed"])
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue this run from its last checkpoint, with its own "
                            "data, model and settings; a model, fit or data option that "
                            "differs from the run's is refused by name (--epochs, "
                            "--device, --quiet, --num-workers, --disk-order may change)")
    train.add_argument("--new-data", action="store_true",
                       help="with --resume and --data (or --dataset, --views, "
                            "--test-fraction): continue on other data on purpose (same "
                            "modalities and sizes; the run's standardisation is kept); "
                            "without it, data other than the run's is refused")
    train.add_argument("--overwrite", action="store_true",
                       help="--out holds another run (finished or interrupted): delete "
                            "its files and write this run there (refused without it)")
    train.add_argument("--nproc", type=int, default=1, metavar="K",
                       help="data-parallel on K processes (launches torchrun; --batch-size "
                            "is per process)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="metrics of a saved run on data")
    ev.add_argument("run_dir")
    ev.add_argument("--data", help=".npz or .nc file with the same modalities "
                                   "(default: the run's own held-out split)")
    ev.add_argument("--device", default=LOAD["device"],
                    help="where to load the run: auto, cpu or cuda (default: %(default)s)")
    ev.add_argument("--contributions", action="store_true",
                    help="per-modality contributions phi_m (nats), as ARM measures them")
    ev.add_argument("--json", action="store_true", help="also print metrics as JSON")
    ev.set_defaults(func=_evaluate)

    imp = sub.add_parser("impute", help="posterior predictive of the missing modalities' "
                                         "features (mean, sd, quantiles) as netCDF")
    imp.add_argument("run_dir")
    imp.add_argument("--data", required=True,
                     help=".npz or .nc file; its masks say which modalities are missing")
    imp.add_argument("--out", required=True, metavar="FILE.nc", help="netCDF file to write")
    imp.add_argument("--num-samples", type=int, default=IMPUTE["num_samples"],
                     help="global posterior draws (default: %(default)s)")
    imp.add_argument("--quantiles", type=float, nargs="*", default=[0.05, 0.95],
                     help="quantile levels (default: 0.05 0.95, a 90%% interval)")
    imp.add_argument("--device", default=LOAD["device"],
                     help="where to load the run: auto, cpu or cuda (default: %(default)s)")
    imp.add_argument("--seed", type=int, default=IMPUTE["seed"])
    imp.set_defaults(func=_impute)

    diag = sub.add_parser("diagnose", help="posterior diagnostics of a saved run: "
                                           "summary, ArviZ data, figures")
    diag.add_argument("run_dir")
    diag.add_argument("--data", help=".npz or .nc file with the same modalities "
                                     "(default: the run's own held-out split)")
    diag.add_argument("--out", metavar="FILE.nc",
                      help="write the ArviZ xarray.DataTree (.nc: netCDF, .zarr: Zarr)")
    diag.add_argument("--plots", metavar="DIR", help="write the figures here as PNG")
    diag.add_argument("--num-samples", type=int, default=DIAGNOSE["num_samples"],
                      help="posterior draws (default: %(default)s)")
    diag.add_argument("--device", default=DIAGNOSE["device"],
                      help="where to load the run: auto, cpu or cuda (default: %(default)s)")
    diag.add_argument("--seed", type=int, default=DIAGNOSE["seed"])
    diag.add_argument("--quiet", action="store_true", help="no progress bar")
    diag.set_defaults(func=_diagnose)
    return parser


def _diagnose(args) -> int:
    return run_diagnose(args.run_dir, out=args.out, plots=args.plots,
                        num_samples=args.num_samples, data=args.data, device=args.device,
                        seed=args.seed, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (DataValidationError, CheckpointError, TrainingDivergedError, DistributedError,
            ValueError) as exc:
        print(f"pyro-mm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
