# Chapter 01's baseline on the default corpus (Tiny Shakespeare): the learned bigram (a V x V table
# of next-token logits) through the same step and loop as the GPT; the count-based bigram's val loss is printed
# beside it. A table lookup takes far larger steps than a GPT's weights: lr 0.1 (the GPT's 1e-3
# moves each logit at most ~1e-3 per step and ends near 4.4 nats after 1000 iterations).
model = "bigram"
out_dir = "out-bigram"
learning_rate = 0.1
min_lr = 0.01
weight_decay = 0.0
