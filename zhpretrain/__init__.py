"""zhpretrain: pretrain a small GPT-style Chinese language model from scratch with Hugging Face tools."""
