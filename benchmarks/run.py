"""Run every benchmark in turn: ``python -m benchmarks.run [--tiny]``."""

from __future__ import annotations

import sys

from . import (arm, baselines_run, classification, clustering, component_cost, dpgmm, draws,
               few_labels, generative_path, gpu, imputation, lockstep, missing, overhead,
               scale, store_checksums, throughput)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    for module in (classification, missing, baselines_run, few_labels, generative_path, arm,
                   dpgmm, imputation, clustering, component_cost, overhead, throughput, draws,
                   scale, lockstep, store_checksums, gpu):
        print(f"== benchmarks.{module.__name__.rsplit('.', 1)[-1]}", flush=True)
        module.main(argv)


if __name__ == "__main__":
    main()
