# train.py's main job: what `python train.py` (or `jaxgpt train`) runs when it is given no config file.
# A 4-layer character GPT on Tiny Shakespeare (shipped, offline), about 3 minutes on 2 CPU cores, trained
# with the CPU speedrun's recipe (configs/speedrun_cpu.py, docs/speedrun.md: nanoGPT's CPU loss in about
# a quarter of its time) at twice the speedrun's context, so a newcomer's first samples are as good as
# three minutes can make them. Flags still win: `python train.py --max_iters=100`. A config file given on
# the command line replaces this one, and then the plain defaults of `--help` apply.
out_dir = "out"
dataset = "shakespeare"
tokenizer = "char"
batch_size = 12
block_size = 128            # twice the speedrun's 64: longer context reads better in samples
n_layer, n_head, n_embd = 4, 4, 128
dropout = 0.0
bias = False                # as nanoGPT and the speedrun

# The speedrun's recipe (each choice's gain is measured in docs/speedrun.md).
pos_emb = "rope"
tie_embeddings = False
qk_norm = True
mlp = "relu2"
zero_init_proj = True
optimizer = "muon"          # Newton-Schulz-orthogonalized updates for the blocks' hidden matrices
muon_learning_rate = 0.05
muon_ns_steps = 3
learning_rate = 5e-3        # AdamW's part: embeddings, head and gains
min_lr = 1e-4
schedule = "wsd"            # warmup, stable, then a linear cooldown over the last 40%
cooldown_frac = 0.4
warmup_iters = 30
max_iters = 1000
lr_decay_iters = 1000
eval_interval = 250
