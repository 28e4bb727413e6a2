"""A batch sampler's position as a checkpoint keeps it: the one way jaxgpt saves and restores it.

A position is a small JSON dict of integers: a numpy PCG64 generator's words (its 128-bit state
and increment as decimal strings, which any JSON reader keeps exactly, and its buffered 32-bit
half), and/or plain counters (seed, epoch, pos, ...). The samplers keep their own keys around
these words, as checkpoints written before this module have them:

    BatchSampler (jaxgpt.data.corpus)    {"bit_generator": "PCG64", "seed": s, **pcg64_words(rng)}
    ClassifyBatches (finetune.classify)  {"classify_sampler": {**pcg64_words(rng), "order": [...], "pos": p}}
    SFTBatches (finetune.instruct)       {"sft_batches": {"seed": s, "epoch": e, "pos": p}}

jaxgpt.data.store.ShardedBatchSampler inherits BatchSampler's state_dict/load_state_dict, so it
saves its position this way already; a field of its own (a shard cursor, say) would go beside the
words and be read back with `int_fields`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["pcg64_words", "restore_pcg64", "int_fields", "not_a_state"]


def pcg64_words(rng: np.random.Generator) -> Dict[str, Any]:
    """The position of a PCG64-backed generator, JSON-serializable."""
    st = rng.bit_generator.state
    return {"state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def restore_pcg64(rng: np.random.Generator, words: Mapping[str, Any]) -> None:
    """Put `rng` where the generator that gave `words` (pcg64_words) was. A dict that is not such a
    position raises KeyError, TypeError or ValueError, before `rng` is touched."""
    state = {"bit_generator": "PCG64", "state": {"state": int(words["state"]), "inc": int(words["inc"])},
             "has_uint32": int(words["has_uint32"]), "uinteger": int(words["uinteger"])}
    rng.bit_generator.state = state


def int_fields(saved: Mapping[str, Any], names: Sequence[str]) -> Tuple[int, ...]:
    """The named counters of a saved position, as ints (KeyError, TypeError or ValueError if not)."""
    return tuple(int(saved[name]) for name in names)


def not_a_state(what: str, exc: Exception) -> ValueError:
    """The one-line error of a position that cannot be read: 'not {what} (KeyError: 'pos')'."""
    return ValueError(f"not {what} ({type(exc).__name__}: {exc})")
