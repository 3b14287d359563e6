"""Developer benchmarks and profilers (not part of the installed ``extracter`` package; the user tools are in
``scripts/`` and :mod:`extracter.tools`). Run them from the repository root as modules::

    python -m benchmarks.benchmark_search --help     # approximate vs exact texture search, and end to end
    python -m benchmarks.benchmark_scaling --help    # time and peak memory of one forward pass vs output size
    python -m benchmarks.benchmark_quality --help    # quality of checkpoints on real pictures, side by side
    python -m benchmarks.benchmark_conv --help       # this CPU's 3x3 conv throughput, the main network's share
    python -m benchmarks.profile_inference --help    # CPU time of one inference by stage and operation
    python -m benchmarks.measure_tile_pad --help     # tile padding each architecture needs
    python -m benchmarks.model_stats --help          # parameters and multiply-adds of each architecture
    python -m benchmarks.bench_data --help           # data loading throughput, folders vs LMDB

What they share is in :mod:`benchmarks.harness`; results committed from them are under ``docs/benchmarks/``.
"""
