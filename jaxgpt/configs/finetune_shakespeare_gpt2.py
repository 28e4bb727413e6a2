# Fine-tune pretrained GPT-2 (124M) on Tiny Shakespeare with its own BPE (nanoGPT's finetune_shakespeare).
# init_from takes a hub name (needs network) or a local Hugging Face GPT-2 directory.
out_dir = "out-shakespeare-gpt2"
init_from = "gpt2"
dataset = "shakespeare"
tokenizer = "gpt2"

eval_interval = 5
eval_iters = 40
always_save_checkpoint = False

batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
dropout = 0.0
compute_dtype = "bfloat16"

learning_rate = 3e-5
decay_lr = False
max_iters = 20
