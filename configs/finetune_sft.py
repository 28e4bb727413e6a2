# Instruction fine-tuning (the course's chapter 7): python finetune.py configs/finetune_sft.py
# Default data: rule-made instructions with one checkable answer each (jaxgpt.instruct_data),
# a char GPT trained from scratch; the loss counts response tokens only.
task = "sft"
dataset = "embedded"
out_dir = "out-sft"
init_from = "scratch"
template = "short"
mask_prompt = True
block_size = 96          # max_length: longer examples are cut (counted per split)
n_layer, n_head, n_embd = 4, 4, 128
dropout = 0.0
batch_size = 32
max_iters = 1500
lr_decay_iters = 1500
warmup_iters = 100
learning_rate = 2e-3
min_lr = 2e-4
weight_decay = 0.1
eval_interval = 250
eval_iters = 4
log_interval = 50
