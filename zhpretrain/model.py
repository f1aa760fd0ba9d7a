"""Build a GPT-style model from a config.json shape plus overrides, with a padded vocabulary, and count its parameters."""
import os
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, set_seed

from .config import REPO
from .errors import UserError

VOCAB_MULTIPLE = 64  # tensor cores and fused kernels prefer embedding rows in multiples of 64


def build_config(model_args, tokenizer, block_size: int):
    path = model_args.model_config
    if not os.path.exists(path):
        raise UserError(f"model_config '{model_args.model_config}' does not exist. Use one of the shapes in "
                        f"{REPO / 'configs' / 'models'} or a folder holding a config.json.")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not read the model config {path}: {e}") from None
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config.vocab_size = vocab
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as e:
            raise UserError(f"config_overrides '{model_args.config_overrides}': {e}. Use key=value pairs separated by commas.") from None
    if config.vocab_size < len(tokenizer):
        raise UserError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}. "
                        f"Remove vocab_size from config_overrides or set it to at least {len(tokenizer)}.")
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        raise UserError(f"block_size {block_size} is larger than the model's position limit {positions} "
                        f"({Path(path).name}). Lower --block_size or raise max_position_embeddings in --config_overrides.")
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_model(config, seed: int, weights: str | None = None):
    """A randomly initialised model, or the safetensors weights of a finished checkpoint."""
    if weights:
        return AutoModelForCausalLM.from_pretrained(weights, config=config, use_safetensors=True)
    # TrainingArguments(seed=) does not seed the weights: seed before building so a run's init is reproducible.
    set_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def count_parameters(model) -> dict:
    embeddings = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "embedding_parameters": sum(embeddings.values()),
            "non_embedding_parameters": total - sum(embeddings.values())}
