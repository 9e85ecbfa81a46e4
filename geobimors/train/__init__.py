"""Training and evaluation of heads: data, few-shot training loop, metrics."""
