"""Reproducible benchmarks; each module runs with ``python -m benchmarks.<name>``.

Every benchmark writes its raw results to ``benchmarks/results/<name>.json`` and
regenerates ``benchmarks/RESULTS.md`` from all JSON files present.
"""
