"""`jaxgpt bench`'s tasks, one module each (sample, train, step), the helpers they share (common),
its command line (cli) and the PyTorch twin the comparisons run (torch_twin).

Benchmarks, not runtime code: no other part of jaxgpt imports this package. Each task module holds
its options dict and its run(opts); jaxgpt.bench.cli registers them in its TASKS. torch is imported
only when a run needs it (torch_twin imports it at its top, so only the tasks' runs import torch_twin).
"""
