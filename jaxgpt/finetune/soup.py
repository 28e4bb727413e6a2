"""A greedy soup of a classification run's checkpoints, chosen on val (`--soup=K`).

Wortsman et al. 2022, "Model soups": the K kept checkpoints with the lowest val loss are taken best
first; each joins the soup (the uniform average of its members' weights) only if the soup's val loss
does not rise. Checkpoints of one fine-tuning trajectory lie in one basin, so their average is a model
of its own, often better than any member (stochastic weight averaging's observation); the val split
decides which join, so the test split is read once, by the soup. With no member but the best the
soup is that checkpoint: what --soup=0 tests.

The run's final metrics event names the members ("soup"); `--classify` averages the same ones.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax

__all__ = ["average", "greedy_soup", "soup_members"]


def average(trees: Sequence[Any]) -> Any:
    """The leafwise mean of pytrees of one structure."""
    return jax.tree_util.tree_map(lambda *leaves: sum(leaves) / len(leaves), *trees)


def greedy_soup(candidates: Sequence[Tuple[int, float]], params_of: Callable[[int], Any],
                val_loss_of: Callable[[Any], float], first: Optional[int] = None) -> Tuple[List[int], Any, float]:
    """(member steps, the soup's params, its val loss) from (step, val loss) candidates: the best first
    (`first`, when given: the run's best-val checkpoint, whatever ties), then each in order of val loss
    if adding it does not raise the soup's val loss."""
    ordered = sorted(candidates, key=lambda c: (c[0] != first, c[1], c[0]))
    members = [ordered[0][0]]
    total = params_of(members[0])
    soup = total
    best = val_loss_of(soup)
    for step, _ in ordered[1:]:
        trial_total = jax.tree_util.tree_map(lambda a, b: a + b, total, params_of(step))
        trial = jax.tree_util.tree_map(lambda a: a / (len(members) + 1), trial_total)
        loss = val_loss_of(trial)
        if loss <= best:
            members, total, soup, best = members + [step], trial_total, trial, loss
    return members, soup, best


def soup_members(events: Sequence[dict]) -> List[int]:
    """The member steps a finished run's final metrics event names ([] for a run without a soup)."""
    final = [e for e in events if "test_accuracy" in e]
    return list(final[-1].get("soup", [])) if final else []
