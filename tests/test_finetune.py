"""Fine-tuning mechanics, pinned: pooling, frozen params, LoRA, metrics, splits, the loop's hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.model import lora
from jaxgpt.finetune.classify import (classification_loss, classification_metrics, classifier_init, classifier_logits,
                             cut_to, encode_texts, next_token_loss, pool, targets_for, trainable_mask)
from jaxgpt.finetune.backbone import Backbone, extend_char_vocab
from jaxgpt.finetune.classify_data import LabeledTexts, make_splits
from jaxgpt.model.config import GPTConfig
from jaxgpt.data.corpus import DataError
from jaxgpt.model.gpt import GPT
from jaxgpt.train.optim import freeze, make_optimizer
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.train.step import create_train_state, make_train_step

CFG = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=16)


def test_pool_reads_the_last_real_token_under_left_and_right_padding():
    rng = np.random.default_rng(0)
    h_BTD = jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32)
    lengths = np.array([7, 3, 1])
    right = np.arange(7)[None, :] < lengths[:, None]
    left = np.arange(7)[None, :] >= (7 - lengths)[:, None]
    got_right = pool(h_BTD, jnp.asarray(right), "last")
    got_left = pool(h_BTD, jnp.asarray(left), "last")
    np.testing.assert_array_equal(got_right, np.stack([h_BTD[b, lengths[b] - 1] for b in range(3)]))
    np.testing.assert_array_equal(got_left, h_BTD[:, -1])  # left padding: the real text ends at T-1
    # mean pooling averages exactly the real positions
    mean = pool(h_BTD, jnp.asarray(left), "mean")
    np.testing.assert_allclose(mean[1], np.mean(np.asarray(h_BTD)[1, 4:], axis=0), rtol=1e-6)
    # max pooling: the per-feature max of exactly the real positions, under either padding
    for mask, real in ((left, lambda b: slice(7 - lengths[b], 7)), (right, lambda b: slice(0, lengths[b]))):
        got = pool(h_BTD, jnp.asarray(mask), "max")
        np.testing.assert_array_equal(got, np.stack([np.asarray(h_BTD)[b, real(b)].max(0) for b in range(3)]))
    np.testing.assert_array_equal(pool(h_BTD, jnp.zeros((3, 7), bool), "max"), np.zeros((3, 5)))  # no real token


def test_padding_never_changes_a_rows_class_logits():
    """Causal attention: right-padding a text (with any pad ids) leaves its pooled logits as they were."""
    params = classifier_init(CFG, 3, "all", 4, jax.random.key(0))
    model = GPT(CFG)
    ids = jnp.asarray([[3, 5, 7, 9, 0, 0, 0, 0, 0, 0, 0, 0], [3, 5, 7, 9, 11, 2, 4, 6, 1, 1, 1, 1]])
    mask = jnp.asarray([[True] * 4 + [False] * 8, [True] * 4 + [False] * 8])
    for pooling in ("last", "mean", "max"):
        logits = classifier_logits(model, params, ids, mask, pooling, 2.0)
        alone = classifier_logits(model, params, ids[:1, :4], mask[:1, :4], pooling, 2.0)
        # same row with other pad ids: bit-identical; against the unpadded row: float32 rounding
        # of attention over 4 vs 12 keys (masked ones contribute exact zeros), so 1e-6
        np.testing.assert_array_equal(logits[0], logits[1])
        np.testing.assert_allclose(logits[0], alone[0], atol=1e-6)


def _train(trainable, steps=3):
    params = classifier_init(CFG, 2, trainable, 4, jax.random.key(1))
    mask = trainable_mask(params, trainable, CFG.n_layer)
    loss = classification_loss(GPT(CFG), 2, "last", 2.0, frozen_mask=mask)
    opt = freeze(make_optimizer(1e-2, weight_decay=0.1), lambda p: trainable_mask(p, trainable, CFG.n_layer))
    state = create_train_state(params, opt)
    step = jax.jit(make_train_step(loss, opt))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        tokens = rng.integers(0, CFG.vocab_size, (1, 4, CFG.block_size), dtype=np.int32)
        labels = rng.integers(0, 2, (1, 4))
        targets = np.where(np.arange(CFG.block_size) < 9, labels[..., None], -1).astype(np.int32)
        state, _ = step(state, (jnp.asarray(tokens), jnp.asarray(targets)), jax.random.key(2))
    return params, mask, state


@pytest.mark.parametrize("trainable", ["head", "last_block", "lora"])
def test_frozen_params_stay_bit_identical_and_hold_no_adam_moments(trainable):
    before, mask, state = _train(trainable)
    leaves = jax.tree_util.tree_leaves_with_path(before)
    after = dict(jax.tree_util.tree_leaves_with_path(state.params))
    flat_mask = dict(jax.tree_util.tree_leaves_with_path(mask))
    changed = 0
    for path, leaf in leaves:
        if flat_mask[path]:
            changed += not np.array_equal(np.asarray(leaf), np.asarray(after[path]))
        else:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(after[path]), err_msg=str(path))
    assert changed > 0  # something trained
    trainable_elems = sum(np.size(l) for p, l in leaves if flat_mask[p])
    # AdamW's state: mu and nu for the trainable leaves only, plus scalar counts
    state_elems = sum(np.size(l) for l in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(l) > 0)
    assert state_elems == 2 * trainable_elems, (state_elems, trainable_elems)


def test_trainable_all_updates_the_backbone_but_not_the_unused_lm_head():
    cfg = CFG.replace(tie_embeddings=False)
    params = classifier_init(cfg, 2, "all", 4, jax.random.key(0))
    mask = trainable_mask(params, "all", cfg.n_layer)
    assert not mask["backbone"]["lm_head"]["kernel"] and mask["backbone"]["h_0"]["attn"]["c_attn"]["kernel"]


def test_lora_merged_logits_equal_unmerged():
    """x (W + s a b) against x W + s (x a) b: two association orders of the same float32 sum.
    Each differs from exact by <= ~sqrt(K) eps |x||W| per dot (K <= 4D = 64 here), so logits agree
    to 1e-5 relative to their scale."""
    params = GPT(CFG).init(jax.random.key(0), jnp.zeros((1, CFG.block_size), jnp.int32))["params"]
    adapters = lora.init_adapters(params, 4, jax.random.key(1))
    adapters = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), adapters)
    ids = jax.random.randint(jax.random.key(3), (2, CFG.block_size), 0, CFG.vocab_size)
    merged = GPT(CFG).apply({"params": lora.merge(params, adapters, 2.0)}, ids)
    unmerged = lora.apply_unmerged(GPT(CFG), params, adapters, 2.0, ids)
    plain = GPT(CFG).apply({"params": params}, ids)
    scale = float(jnp.max(jnp.abs(merged)))
    assert float(jnp.max(jnp.abs(merged - plain))) > 1e-3 * scale  # the adapters do change the model
    np.testing.assert_allclose(merged, unmerged, atol=1e-5 * scale, rtol=0)
    # every adapted kernel got its adapter
    assert set(adapters["h_0"]["attn"]) == {"c_attn", "c_proj"} and set(adapters["h_1"]["mlp"]) == {"c_fc", "c_proj"}


def test_fresh_lora_adapters_change_nothing():
    params = GPT(CFG).init(jax.random.key(0), jnp.zeros((1, CFG.block_size), jnp.int32))["params"]
    adapters = lora.init_adapters(params, 4, jax.random.key(1))
    merged = lora.merge(params, adapters, 2.0)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(merged)):
        np.testing.assert_array_equal(a, b)


def test_metrics_from_a_confusion_matrix():
    # true ham: 50 right, 2 called spam; true spam: 45 right, 3 missed
    m = classification_metrics([[50, 2], [3, 45]])
    assert m["accuracy"] == pytest.approx(95 / 100)
    assert m["precision"] == pytest.approx(45 / 47) and m["recall"] == pytest.approx(45 / 48)
    assert m["f1"] == pytest.approx(2 * (45 / 47) * (45 / 48) / (45 / 47 + 45 / 48))


def test_loss_counts_real_rows_only_and_matches_a_hand_computation():
    params = classifier_init(CFG, 2, "all", 4, jax.random.key(0))
    model = GPT(CFG)
    loss = classification_loss(model, 2, "last", 2.0)
    tokens = jax.random.randint(jax.random.key(1), (3, CFG.block_size), 0, CFG.vocab_size)
    targets = np.array(targets_for(np.array([5, 12, 3]), np.array([1, 0, 1]), CFG.block_size))
    targets[2] = -1  # a filler row
    value, aux = loss(params, (tokens, jnp.asarray(targets)), None)
    logits = classifier_logits(model, params, tokens, jnp.asarray(targets) >= 0, "last", 2.0)
    hand = -(jax.nn.log_softmax(logits[0])[1] + jax.nn.log_softmax(logits[1])[0]) / 2
    np.testing.assert_allclose(value, hand, rtol=1e-6)
    assert float(aux["rows"]) == 2


def _loss_inputs():
    params = classifier_init(CFG, 2, "all", 4, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, CFG.block_size), 0, CFG.vocab_size)
    targets = np.array(targets_for(np.array([5, 12, 3]), np.array([1, 0, 1]), CFG.block_size))
    targets[2] = -1  # a filler row
    return params, tokens, jnp.asarray(targets)


def test_label_smoothing_and_the_lm_loss_change_the_training_objective_only():
    """Training (an rng; dropout 0, so the same forward) adds them; eval (rng None) and every
    loss_sum (what val loss and checkpoint choice read) stay the plain cross-entropy."""
    params, tokens, targets = _loss_inputs()
    model = GPT(CFG)
    plain, plain_aux = classification_loss(model, 2, "max", 2.0)(params, (tokens, targets), None)
    logp = jax.nn.log_softmax(classifier_logits(model, params, tokens, targets >= 0, "max", 2.0))
    eps = 0.2  # targets (1 - eps + eps/2) on the true class, eps/2 on the other
    hand = -((1 - eps / 2) * (logp[0, 1] + logp[1, 0]) + eps / 2 * (logp[0, 0] + logp[1, 1])) / 2
    h = model.apply({"params": params["backbone"]}, tokens, method=GPT.features)
    lm = next_token_loss(model, params["backbone"], h, tokens, targets >= 0)
    for kwargs, expected in (({"label_smoothing": eps}, hand), ({"lm_loss_weight": 0.5}, plain + 0.5 * lm),
                             ({"label_smoothing": eps, "lm_loss_weight": 0.5}, hand + 0.5 * lm)):
        loss = classification_loss(model, 2, "max", 2.0, **kwargs)
        trained, aux = loss(params, (tokens, targets), jax.random.key(3))
        np.testing.assert_allclose(trained, expected, rtol=1e-5)
        evaluated, eval_aux = loss(params, (tokens, targets), None)
        assert float(evaluated) == float(plain)
        for a in (aux, eval_aux):
            np.testing.assert_allclose(a["loss_sum"], plain_aux["loss_sum"], rtol=1e-6)


@pytest.mark.parametrize("config", [CFG, CFG.replace(tie_embeddings=False, bias=True),
                                    CFG.replace(mup=True, mup_base_width=8)], ids=["tied", "untied", "mup"])
def test_next_token_loss_is_the_lm_loss_of_the_real_tokens(config):
    params = classifier_init(config, 2, "all", 4, jax.random.key(0))
    _, tokens, targets = _loss_inputs()
    model = GPT(config)
    h = model.apply({"params": params["backbone"]}, tokens, method=GPT.features)
    got = next_token_loss(model, params["backbone"], h, tokens, targets >= 0)
    logits = model.apply({"params": params["backbone"]}, tokens)  # GPT's own LM head
    logp = jax.nn.log_softmax(logits, axis=-1)
    # row 0: 5 real tokens -> 4 predictions; row 1: 12 -> 11; row 2 (filler): none
    terms = [-logp[b, t, tokens[b, t + 1]] for b, n in ((0, 5), (1, 12)) for t in range(n - 1)]
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_char_backbone_maps_unknown_characters_and_counts_them():
    tok = CharTokenizer("?abc")
    enc = encode_texts(tok, ["abc", "a£€b", "abcabcabc"], 6)
    assert enc.unknown_chars == 2 and enc.truncated == 1
    assert enc.tokens_NT[1, :4].tolist() == [1, 0, 0, 2] and enc.lengths_N.tolist() == [3, 4, 6]


def _labeled(labels):
    return LabeledTexts("t", tuple(f"text {i}" for i in range(len(labels))), tuple(labels), "0" * 64, "t.csv", "")


def test_splits_are_seeded_balanced_and_disjoint():
    data = _labeled(["a"] * 80 + ["b"] * 20)
    s1 = make_splits(data, 5, 0.1, 0.2, balance=True)
    s2 = make_splits(data, 5, 0.1, 0.2, balance=True)
    assert s1.train.texts == s2.train.texts and s1.test.texts == s2.test.texts
    assert sum(sum(c.values()) for c in s1.counts().values()) == 40  # 20 + 20
    assert {k: sum(v.values()) for k, v in s1.counts().items()} == {"train": 28, "val": 4, "test": 8}
    assert not set(s1.train.texts) & set(s1.val.texts + s1.test.texts)
    assert len(s1.unused) == 60 and not set(s1.unused) & set(s1.val.texts + s1.test.texts)
    assert make_splits(data, 6, 0.1, 0.2, balance=True).train.texts != s1.train.texts


def test_a_label_missing_from_train_is_refused():
    """A singleton class: wherever a seed puts it, either train holds it or make_splits refuses."""
    data = _labeled(["a"] * 30 + ["b"] * 30 + ["rare"])
    refused = 0
    for seed in range(12):
        try:
            s = make_splits(data, seed, 0.1, 0.2)
            assert "rare" in [s.labels[i] for i in s.train.label_ids]
        except DataError as exc:
            assert "'rare'" in str(exc) and "train split lacks" in str(exc)
            refused += 1
    assert refused > 0


def test_extending_a_char_backbone_keeps_its_predictions_and_mean_initializes_the_new_rows():
    for tied in (True, False):
        cfg = GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_embeddings=tied)
        params = jax.tree_util.tree_map(np.asarray, GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
        wider = extend_char_vocab(Backbone(cfg, params, CharTokenizer("?abc"), "b"), "ab9c1 ")
        assert wider.tokenizer.chars == "?abc 19" and wider.model_config.vocab_size == 7
        rows = np.asarray(wider.params["wte"]["embedding"])
        np.testing.assert_array_equal(rows[:4], params["wte"]["embedding"])
        np.testing.assert_allclose(rows[4:], np.broadcast_to(params["wte"]["embedding"].mean(0), (3, 16)), rtol=1e-6)
        tokens = jnp.asarray([[1, 2, 3, 0]])
        old = GPT(cfg).apply({"params": params}, tokens)
        new = GPT(wider.model_config).apply({"params": wider.params}, tokens)
        # the old tokens' logits are computed from the same rows and columns: equal up to float32 summation order
        np.testing.assert_allclose(new[..., :4], old, rtol=1e-5, atol=1e-6)
        assert extend_char_vocab(wider, "abc") is wider  # nothing new: unchanged


def test_max_pooling_with_the_next_token_loss_keeps_finite_gradients():
    """jnp.max's gradient divides by the count of positions equal to the max; XLA:CPU without
    optimizations (the suite's flags) recomputed h with other rounding for that comparison and
    the second step's gradients were nan. pool() gathers at the argmax instead."""
    cfg = GPTConfig(vocab_size=90, block_size=128, n_layer=2, n_head=4, n_embd=64)
    params = classifier_init(cfg, 2, "all", 8, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens, targets = np.zeros((16, 128), np.int32), np.full((16, 128), -1, np.int32)
    for i, n in enumerate(rng.integers(20, 100, 16)):
        tokens[i, :n], targets[i, :n] = rng.integers(1, 90, n), i % 2
    loss = classification_loss(GPT(cfg), 2, "max", 1.0, lm_loss_weight=0.5)
    opt = optax.adamw(3e-3)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: loss(q, (jnp.asarray(tokens), jnp.asarray(targets)), jax.random.key(1))[0])(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, g

    state = opt.init(params)
    for _ in range(3):
        params, state, grads = step(params, state)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    h_BTD = jax.random.normal(jax.random.key(3), (2, 5, 4))
    mask_BT = jnp.arange(5)[None, :] < jnp.array([[5], [2]])
    grad = jax.grad(lambda h: pool(h, mask_BT, "max").sum())(h_BTD)  # one 1 per (row, feature), at the max
    np.testing.assert_array_equal(grad.sum(axis=1), np.ones((2, 4)))
    np.testing.assert_array_equal(grad[1, 2:], 0.0)


def test_long_texts_keep_their_head_their_tail_or_both():
    tok = CharTokenizer("abcdefghij")
    for long_text, kept in (("head", "abcd"), ("tail", "ghij"), ("head_tail", "abij")):
        enc = encode_texts(tok, ["abcdefghij", "abc"], 4, long_text)
        assert tok.decode(enc.tokens_NT[0].tolist()) == kept and enc.truncated == 1
        assert enc.tokens_NT[1, :3].tolist() == [0, 1, 2] and enc.lengths_N.tolist() == [4, 3]
    assert cut_to(list(range(7)), 5, "head_tail") == [0, 1, 4, 5, 6]
    with pytest.raises(ValueError, match="long_text must be one of"):
        cut_to(list(range(7)), 5, "middle")
