# A small isoFLOP scaling study on the embedded corpus (character-level Python source): 4 model
# sizes x 3 compute budgets = 12 members, about 15 minutes on 2 CPU cores.
#   python sweep.py configs/sweep_cpu.py --out_dir=sweep-cpu
# At these budgets the compute-optimal model is tiny (tens of thousands of non-embedding
# parameters): the sizes are chosen to bracket it.
base = dict(
    dataset="stdlib", tokenizer="char", block_size=64, batch_size=16,
    learning_rate=2e-3, min_lr=2e-4, warmup_iters=50, weight_decay=0.1, beta2=0.99,
    eval_interval=200, eval_iters=10, log_interval=50, dropout=0.0,
)
shapes = [
    dict(n_layer=1, n_head=2, n_embd=32),
    dict(n_layer=2, n_head=2, n_embd=32),
    dict(n_layer=2, n_head=3, n_embd=48),
    dict(n_layer=2, n_head=4, n_embd=64),
]
compute = [2e11, 6e11, 2e12]  # FLOPs = 6 N D: each shape trains D = C / (6 N) tokens
