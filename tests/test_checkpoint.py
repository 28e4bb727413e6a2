"""Checkpointer (orbax): round trip, keep-last-N plus best, clear errors, full disk.

Single device, in process. Restoring onto other meshes and multi-process saves are in
tests/test_sharding.py (they need simulated devices in a subprocess).
"""

from __future__ import annotations

import errno
import functools
import glob
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from jaxgpt.train.checkpoint import CheckpointError, Checkpointer, best_checkpoint_step, load_inference_params
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.train.optim import make_optimizer
from jaxgpt.train.run_dir import RunDir
from jaxgpt.train.step import TrainState, create_train_state

# A failed tensorstore read/write can leave a callback that fires on orbax's already-closed
# asyncio loop ("RuntimeError: Event loop is closed", reported as unraisable). Harmless: the
# error itself was raised and handled; only that late callback is ignored.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")

CFG = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32)


def make_state(seed: int, config: GPTConfig = CFG, step: int = 0) -> TrainState:
    """A TrainState whose params, moments and step all depend on seed (distinct per save)."""
    return _make_state(config, seed, step)


@functools.partial(jax.jit, static_argnums=0)  # jax.jit(**options) as a decorator: jax >= 0.8.1 only
def _make_state(config: GPTConfig, seed, step):
    # jitted: one compile instead of dozens of eager op dispatches
    params = GPT(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    state = create_train_state(params, make_optimizer(1e-3))
    opt_state = jax.tree_util.tree_map(
        lambda x: x + seed if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state)
    return state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)


def abstract_of(state):
    return jax.eval_shape(lambda s: s, state)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def states():
    return {seed: make_state(seed, step=seed) for seed in range(1, 4)}


def test_save_restore_round_trip(tmp_path, states):
    extra = {"model_config": CFG.to_dict(), "iter_num": 7, "best_val_loss": 1.25, "note": "x"}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(7, states[1], extra, val_loss=1.25)
        assert (ckpt.all_steps(), ckpt.latest_step(), ckpt.best_step()) == ([7], 7, 7)
        restored, got_extra = ckpt.restore(abstract_of(states[1]))
        assert_trees_equal(restored, states[1])
        assert got_extra == extra
        assert ckpt.restore_extra() == extra
        assert ckpt.val_loss(7) == pytest.approx(1.25)
        assert_trees_equal(ckpt.restore_params(abstract_of(states[1].params)), states[1].params)
    # the items are separate directories: inference reads params without the optimizer state
    assert {"params", "train", "extra"} <= set(os.listdir(tmp_path / "ckpt" / "7"))


def test_keep_last_plus_best(tmp_path, states):
    ckpt = Checkpointer(tmp_path, keep_last=2, keep_best=True)
    history = [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, 2.5), (6, 0.5), (7, 0.9)]
    expected_after = [[1], [1, 2], [2, 3], [2, 3, 4], [2, 4, 5], [5, 6], [6, 7]]
    for (step, loss), want in zip(history, expected_after):
        ckpt.save(step, states[1 + step % 3], {"step": step}, val_loss=loss)
        assert ckpt.all_steps() == want, (step, ckpt.all_steps())
        assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == want
    assert ckpt.best_step() == 6 and ckpt.latest_step() == 7
    ckpt.close()
    reopened = Checkpointer(tmp_path, keep_last=2)  # state comes from disk, not memory
    assert (reopened.all_steps(), reopened.best_step()) == ([6, 7], 6)
    restored, extra = reopened.restore(abstract_of(states[1]), step=6)
    assert extra == {"step": 6}
    assert_trees_equal(restored, states[1 + 6 % 3])


def test_keep_last_without_best(tmp_path, states):
    ckpt = Checkpointer(tmp_path, keep_last=1, keep_best=False)
    for step, loss in [(1, 0.1), (2, 5.0), (3, 6.0)]:
        ckpt.save(step, states[1], {}, val_loss=loss)
    assert ckpt.all_steps() == [3]


def test_best_checkpoint_step_of_a_run_directory(tmp_path, states):
    """The lowest recorded val_loss, else the latest; None without a checkpoint."""
    ranked, unranked = RunDir(tmp_path / "ranked"), RunDir(tmp_path / "unranked")
    assert best_checkpoint_step(ranked.path) is None
    with Checkpointer(ranked.checkpoint_dir, keep_best=True) as ckpt:
        for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]:
            ckpt.save(step, states[1], {}, val_loss=loss)
    with Checkpointer(unranked.checkpoint_dir) as ckpt:
        for step in (1, 3):
            ckpt.save(step, states[1], {})
    assert (best_checkpoint_step(ranked.path), best_checkpoint_step(unranked.path)) == (2, 3)


def test_nan_loss_never_best_and_existing_step_not_overwritten(tmp_path, states):
    ckpt = Checkpointer(tmp_path, keep_last=3)
    ckpt.save(1, states[1], {"v": 1}, val_loss=float("nan"))
    assert ckpt.best_step() is None
    ckpt.save(2, states[2], {"v": 2}, val_loss=2.0)
    ckpt.save(2, states[3], {"v": 3}, val_loss=0.1)  # e.g. first save after a resume
    assert ckpt.all_steps() == [1, 2] and ckpt.best_step() == 2
    restored, extra = ckpt.restore(abstract_of(states[1]), step=2)
    assert extra == {"v": 2}
    assert_trees_equal(restored, states[2])


def test_bad_arguments(tmp_path, states):
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path, keep_last=0)
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="step"):
        ckpt.save(-1, states[1], {})
    with pytest.raises(ValueError, match="extra"):
        ckpt.save(1, states[1], ["not", "a", "dict"])


def test_missing_and_empty_directories(tmp_path, states):
    with pytest.raises(CheckpointError, match=r"no checkpoint directory at .*nowhere.checkpoints"):
        load_inference_params(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        Checkpointer(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()  # read-only never creates it
    os.makedirs(tmp_path / "run" / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint found in"):
        load_inference_params(tmp_path / "run")
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() is None and ckpt.best_step() is None and ckpt.all_steps() == []
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ckpt.restore(abstract_of(states[1]))
    ckpt.save(5, states[1], {})
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 4 .*\(have \[5\]\)"):
        ckpt.restore_extra(step=4)


def _save_run(out_dir, states, config=CFG):
    with Checkpointer(os.path.join(out_dir, "checkpoints"), keep_last=2) as ckpt:
        ckpt.save(1, states[1], {"model_config": config.to_dict()}, val_loss=1.0)
        ckpt.save(2, states[2], {"model_config": config.to_dict()}, val_loss=2.0)


def test_load_inference_params_latest_and_best(tmp_path, states):
    _save_run(tmp_path, states)
    config, params = load_inference_params(tmp_path)
    assert config == CFG
    assert_trees_equal(params, states[2].params)
    assert {x.sharding.device_set.pop() for x in jax.tree_util.tree_leaves(params)} == {jax.devices()[0]}
    config, params = load_inference_params(tmp_path, which="best")
    assert_trees_equal(params, states[1].params)
    logits = jax.jit(GPT(config).apply)({"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert logits.shape == (1, 4, CFG.vocab_size)
    with pytest.raises(ValueError, match="which"):
        load_inference_params(tmp_path, which="first")


def test_load_inference_params_without_model_config(tmp_path, states):
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        ckpt.save(3, states[1], {"iter_num": 3})
    with pytest.raises(CheckpointError, match="step 3 .* has no model_config"):
        load_inference_params(tmp_path)


@pytest.mark.parametrize("damage", ["array_data", "array_manifest", "extra_json"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, states, damage):
    _save_run(tmp_path, states)
    step_dir = tmp_path / "checkpoints" / "2"
    if damage == "array_data":
        files = glob.glob(str(step_dir / "params" / "d" / "*"))
        assert files
        for name in files:
            with open(name, "wb") as f:
                f.write(b"\x00garbage" * 8)
    elif damage == "array_manifest":
        os.remove(step_dir / "params" / "manifest.ocdbt")
    else:
        for name in glob.glob(str(step_dir / "extra" / "*")):
            if os.path.isfile(name):
                with open(name, "w") as f:
                    f.write("{truncated")
    with pytest.raises(CheckpointError, match="checkpoint at step 2 .* is unreadable") as info:
        load_inference_params(tmp_path)
    assert "\n" not in str(info.value)
    # the older step is untouched and still loads
    with Checkpointer(tmp_path / "checkpoints", read_only=True) as ckpt:
        assert_trees_equal(ckpt.restore(abstract_of(states[1]), step=1)[0], states[1])


def test_restore_into_a_different_model_is_a_clear_error(tmp_path, states):
    _save_run(tmp_path, states)
    wider = make_state(0, CFG.replace(n_embd=64))
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        with pytest.raises(CheckpointError, match="does not match"):
            ckpt.restore(abstract_of(wider))


def test_full_disk_keeps_previous_checkpoint(tmp_path, states):
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep_last=1)
    ckpt.save(1, states[1], {"v": 1}, val_loss=2.0)

    calls = []

    def disk_full(self, *args, **kwargs):
        calls.append(str(self))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    # keep_last=1: a successful save of step 2 would delete step 1, a failed one must not.
    with mock.patch.object(type(epath.Path(directory)), "write_text", disk_full):
        with pytest.raises(CheckpointError) as info:
            ckpt.save(2, states[2], {"v": 2}, val_loss=1.0)
    assert calls, "the simulated write was never reached"
    assert str(info.value) == ("could not write checkpoint at step 2: No space left on device; "
                               "the previous checkpoint (step 1) is intact")
    assert os.listdir(directory) == ["1"]  # no half-written step left behind
    assert ckpt.all_steps() == [1] and ckpt.best_step() == 1
    restored, extra = Checkpointer(directory, keep_last=1).restore(abstract_of(states[1]))
    assert extra == {"v": 1}
    assert_trees_equal(restored, states[1])
    ckpt.save(2, states[2], {"v": 2}, val_loss=1.0)  # space is back: the same step saves
    assert ckpt.all_steps() == [2]
    assert_trees_equal(ckpt.restore(abstract_of(states[1]))[0], states[2])


def test_first_save_failing_says_there_is_no_earlier_checkpoint(tmp_path, states):
    ckpt = Checkpointer(tmp_path)

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch.object(type(epath.Path(tmp_path)), "write_text", disk_full):
        with pytest.raises(CheckpointError, match=r"at step 0: No space left on device; "
                                                  r"there is no earlier checkpoint$"):
            ckpt.save(0, states[1], {})
    assert ckpt.all_steps() == []
