"""bench.py's tasks, one module each (sample, train, step), and the helpers they share (common).

Benchmarks, not runtime code: nothing under jaxgpt/ imports this package. Each task module holds
its options dict and its run(opts); bench.py registers them in its TASKS.
"""
