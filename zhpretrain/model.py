"""Build a GPT-style model from a config.json shape plus overrides, with a padded vocabulary, and count its parameters."""
import os
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, set_seed

from .config import REPO
from .errors import UserError

VOCAB_MULTIPLE = 64  # tensor cores and fused kernels prefer embedding rows in multiples of 64


def _read(model_args):
    path = model_args.model_config
    if not os.path.exists(path):
        raise UserError(f"model_config '{model_args.model_config}' does not exist. Use one of the shapes in "
                        f"{REPO / 'configs' / 'models'} or a folder holding a config.json.")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not read the model config {path} with overrides '{model_args.config_overrides or ''}': {e}. "
                        "Fix the file, or use key=value pairs separated by commas in --config_overrides.") from None
    return path, config


def check_positions(model_args, block_size: int) -> None:
    """block_size must fit the model's position limit: cheap to check from the config alone."""
    path, config = _read(model_args)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        raise UserError(f"block_size {block_size} is larger than the model's position limit {positions} "
                        f"({Path(path).name}). Lower --block_size or raise max_position_embeddings in --config_overrides.")


def build_config(model_args, tokenizer, block_size: int):
    path, config = _read(model_args)
    if "vocab_size" not in (model_args.config_overrides or ""):
        config.vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if config.vocab_size < len(tokenizer):
        raise UserError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}. "
                        f"Remove vocab_size from config_overrides or set it to at least {len(tokenizer)}.")
    check_positions(model_args, block_size)
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_model(config, seed: int, weights: str | None = None):
    """A randomly initialised model, or the safetensors weights of a finished checkpoint."""
    if weights:
        try:
            return AutoModelForCausalLM.from_pretrained(weights, config=config, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"Cannot load the finished checkpoint {weights} ({type(e).__name__}). It was written with another "
                            "model shape or as sharded weights; use a new --output_dir or the run's own settings.") from None
    # TrainingArguments(seed=) does not seed the weights: seed before building so a run's init is reproducible.
    set_seed(seed)
    try:
        return AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"Cannot build a causal language model from this config ({type(e).__name__}: {e}). "
                        "Check --model_config and --config_overrides.") from None


def count_parameters(model) -> dict:
    embeddings = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "embedding_parameters": sum(embeddings.values()),
            "non_embedding_parameters": total - sum(embeddings.values())}
