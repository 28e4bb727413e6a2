"""What step 1 of a run (jaxgpt.train.loop.resolve_run) resolves: the ResolvedRun the loop and its
hooks read, and the checkpoint state a resumed run Restored. Its own module so that both
jaxgpt.train.loop and jaxgpt.train.hooks (which the loop imports) can name it without a cycle."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

from jaxgpt.train.config import TrainConfig
from jaxgpt.train.run_dir import RunDir

__all__ = ["Restored", "ResolvedRun"]


@dataclasses.dataclass(frozen=True)
class Restored:
    """The checkpoint a resumed run continues from."""
    step: int
    state: Any  # TrainState on the run's mesh
    extra: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """Everything a run needs, validated; nothing has been written to out_dir yet."""
    cfg: TrainConfig
    corpus: Any
    prepared: Any
    model_config: Any
    task: Any
    mesh: Any
    rows: slice
    optimizer: Any
    schedule: Callable
    pretrained_params: Any
    restored: Optional[Restored]
    notes: List[str]

    @property
    def out_dir(self) -> str:
        return self.cfg.out_dir

    @property
    def checkpoint_dir(self) -> str:
        return RunDir(self.cfg.out_dir).checkpoint_dir
