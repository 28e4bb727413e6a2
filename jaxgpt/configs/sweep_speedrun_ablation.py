# The CPU speedrun's ablation (issue 27) as one sweep: nanoGPT's CPU recipe, then the changes of
# docs/speedrun.md's "the recipe, one change at a time" added one at a time, ending at exactly
# configs/speedrun_cpu.py. Measured side by side, in one process after the other on one machine:
#   python sweep.py configs/sweep_speedrun_ablation.py --out_dir=ablation
# prints (and writes to ablation/ablation.md, .json, .csv) each member's final and best whole-val loss,
# its first eval at or below the target (the reference's best whole-val loss) and its time to target:
# the train clock (train_seconds) at that eval, compilation included, evaluation left out; and that time
# over the reference's. 7 members; estimated (from the step times in docs/speedrun.md, not yet run whole)
# 10-15 minutes on 2 CPU cores, the reference's 2,000 iterations about a third of it.
from jaxgpt.cli import read_config_file as _read_config
from jaxgpt.train.config import OPTIONS as _OPTIONS

# The two ends come from their own config files, so the table cannot drift from them.
_reference = _read_config("shakespeare_char_cpu", _OPTIONS)
# speedrun_cpu as `train.py configs/speedrun_cpu.py` runs it: the keys it leaves out at train.py's defaults
_speedrun = {**{key: _OPTIONS[key].default for key in _reference}, **_read_config("speedrun_cpu", _OPTIONS)}
for _config in (_reference, _speedrun):
    del _config["out_dir"]  # the sweep gives each member its own

# The reference: nanoGPT's CPU recipe (4L/4H/128, block 64, batch 12, AdamW 1e-3 cosine over 2,000),
# measured as the race measures it: the whole val split at each eval, every 100 iterations instead of
# 250 (its target is its own best, at its last eval; a whole-val eval costs ~30 steps here).
base = {**_reference, "eval_full_val": True, "eval_interval": 100}

# Each change on top of the ones above it. Rows 1 and 2 of the docs' table (a higher rate, a shorter
# WSD schedule) are one idea here, and so are rows 6 and 7 (the higher rates need QK-norm). The evals
# get finer as the runs get shorter: only the grain at which a crossing is seen changes, not training.
_changes = [
    ("0-reference", {}),
    ("1-adamw3e-3-wsd600", dict(learning_rate=3e-3, warmup_iters=30, schedule="wsd", cooldown_frac=0.4,
                                max_iters=600, lr_decay_iters=600, eval_interval=50)),
    ("2-muon", dict(optimizer="muon", muon_learning_rate=0.03)),
    ("3-rope-untied", dict(pos_emb="rope", tie_embeddings=False)),
    ("4-iters400", dict(max_iters=400, lr_decay_iters=400, eval_interval=25)),
    ("5-rates-qknorm-relu2-zeroinit", dict(learning_rate=5e-3, muon_learning_rate=0.05, qk_norm=True, mlp="relu2",
                                           zero_init_proj=True)),
]
variants = []
_options = {}
for _name, _change in _changes:
    _options = {**_options, **_change}
    variants.append((_name, _options))
# The last: 3 Newton-Schulz steps instead of 5, which makes it speedrun_cpu, taken whole from its file.
variants.append(("6-ns3-speedrun_cpu", {key: value for key, value in _speedrun.items() if base.get(key) != value}))
