# Classification fine-tuning (the course's chapter 6): python finetune.py configs/finetune_classify.py
# Default data: the embedded stdlib_lines task (is a line of the stdlib code or prose?), with a small
# char backbone pretrained on the stdlib corpus first (cached: a second run reuses it).
task = "classify"
dataset = "stdlib_lines"
out_dir = "out-classify"
init_from = "pretrain"
pretrain_dataset = "stdlib"
pretrain_iters = 100
pretrain_batch_size = 16
n_layer, n_head, n_embd = 4, 4, 128
block_size = 64
long_text = "head"       # what its results were measured with (docs/results/finetuning.md)
trainable = "all"
pooling = "last"
batch_size = 16
max_iters = 150
lr_decay_iters = 150
warmup_iters = 20
learning_rate = 1e-3
min_lr = 1e-4
weight_decay = 0.1
dropout = 0.1
eval_interval = 50
eval_iters = 8
log_interval = 25
