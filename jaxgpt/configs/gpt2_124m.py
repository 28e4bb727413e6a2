# GPT-2 small (124M) from scratch on OpenWebText-style data, nanoGPT's train_gpt2 numbers:
# 12 x 40 x 1024 = 491,520 tokens per update (e.g. 8 GPUs or a TPU v3-8/v5e-8).
# `dataset` takes any local text file or folder; point it at your prepared corpus.
out_dir = "out-gpt2-124m"
dataset = "openwebtext.txt"
tokenizer = "gpt2"

batch_size = 12 * 8          # global rows per micro-step
block_size = 1024
gradient_accumulation_steps = 5

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True
gelu = "tanh"
compute_dtype = "bfloat16"

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 2000

eval_interval = 1000
eval_iters = 200
log_interval = 10
