"""The benchmark (issue 3): a phase day end to end against the naive design and the Postgres bound.

    python -m bench                       # 1,000,000 customers, results in bench/results.json
    python -m bench --recipients 20000    # a quick run
    python -m bench caps                  # batched cap reservation under contention

See docs/benchmarks.md for what is measured and the figures of the last runs.
"""
