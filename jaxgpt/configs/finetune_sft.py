# Instruction fine-tuning (the course's chapter 7): python finetune.py configs/finetune_sft.py
# Default data: rule-made instructions with one checkable answer each (jaxgpt.finetune.instruct_data),
# a small char GPT trained from scratch; the loss counts response tokens only.
# The recipe measured best so far (test exact match 0.83 in 7 min on 2 cores; docs/results/finetuning.md, "Instruction
# following"): the compact template (a char model spends its compute on the template otherwise),
# rotary positions (the answers are read from the input at an offset: reversing, copying in
# capitals), a narrow 3-layer model, 4x the distinct prompts (1,000 per kind memorized), many steps.
task = "sft"
dataset = "embedded"
out_dir = "out-sft"
init_from = "scratch"
template = "compact"
n_per_kind = 4000        # 4,000 prompts per kind (add has 1,000): more distinct data, less memorizing
mask_prompt = True
block_size = 64          # max_length: longer examples are cut (counted per split); none is, here
n_layer, n_head, n_embd = 3, 4, 64
pos_emb = "rope"
dropout = 0.0
batch_size = 32
max_iters = 6000
lr_decay_iters = 6000
warmup_iters = 100
learning_rate = 3e-3
min_lr = 2e-4
weight_decay = 0.1
eval_interval = 500
eval_iters = 4
log_interval = 50
