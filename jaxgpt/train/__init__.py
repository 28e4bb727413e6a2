"""The one training loop every task shares: run config, run directory, checkpoints, resolve, the loop,
the compiled step, tasks, optimizer, sharding and metrics."""
