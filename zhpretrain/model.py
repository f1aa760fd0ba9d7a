"""Build a GPT-style model from a config.json shape plus overrides (or load a causal LM to continue), and count its parameters."""
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, set_seed

from .config import REPO
from .errors import UserError

VOCAB_MULTIPLE = 64  # tensor cores and fused kernels prefer embedding rows in multiples of 64


def _read(model_args):
    if model_args.init_from:
        return model_args.init_from, init_config(model_args.init_from, model_args.trust_remote_code)
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


def init_config(path: str, trust_remote_code: bool = False):
    """The config of a folder holding a causal language model to continue from, or a clear error."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"--init_from {path} is not a model folder Transformers can read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Give a folder with config.json and model.safetensors, such as a run's final/.") from None
    custom = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not (custom or type(config) in MODEL_FOR_CAUSAL_LM_MAPPING):
        raise UserError(f"--init_from {path} holds a '{config.model_type}' model ({', '.join(config.architectures or [])}), which is "
                        "not a causal language model. Continue from a causal LM (GPT-2, Qwen2, Llama, a run's final/ ...).")
    if not list(Path(path).glob("*.safetensors")):
        raise UserError(f"--init_from {path} has no .safetensors weights (only safetensors are loaded: they cannot run code). "
                        "Convert the weights with save_pretrained, or choose a model that ships safetensors.")
    return config


def check_positions(model_args, block_size: int) -> None:
    """block_size must fit the model's position limit: cheap to check from the config alone."""
    path, config = _read(model_args)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        raise UserError(f"block_size {block_size} is larger than the model's position limit {positions} "
                        f"({Path(path).name}). Lower --block_size or raise max_position_embeddings in --config_overrides.")


def build_config(model_args, tokenizer, block_size: int):
    path, config = _read(model_args)
    if model_args.init_from:
        pass  # the weights fix the vocabulary; build_model grows it only if the tokenizer has more tokens
    elif "vocab_size" not in (model_args.config_overrides or ""):
        config.vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if config.vocab_size < len(tokenizer) and not model_args.init_from:
        raise UserError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}. "
                        f"Remove vocab_size from config_overrides or set it to at least {len(tokenizer)}.")
    check_positions(model_args, block_size)
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if model_args.init_from and tokenizer.pad_token_id >= config.vocab_size:
        # A pad we added beyond the weights' rows: some models index an embedding row with it while being built, so it is
        # set once build_model has grown the embeddings.
        config.pad_token_id = None
    return config


def build_model(config, seed: int, weights: str | None = None, init_from: str | None = None, tokens: int = 0,
                pad_token_id: int | None = None):
    """A randomly initialised model, the weights of a causal LM to continue (init_from), or the safetensors weights of a
    finished checkpoint. tokens and pad_token_id: the tokenizer's size, which a continued model's vocabulary must
    cover, and its pad."""
    if weights:
        try:
            # A continued model's checkpoint carries its own config (its vocabulary may have grown).
            return AutoModelForCausalLM.from_pretrained(weights, config=None if init_from else config, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"Cannot load the finished checkpoint {weights} ({type(e).__name__}). It was written with another "
                            "model shape or as sharded weights; use a new --output_dir or the run's own settings.") from None
    if init_from:
        try:
            # fp32 master weights whatever the file holds (hub models are often bf16); --bf16 still trains in mixed precision.
            model = AutoModelForCausalLM.from_pretrained(init_from, config=config, dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"Cannot load the weights of --init_from {init_from} ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
        if tokens > model.config.vocab_size:  # e.g. GPT-2 gains a pad token: new rows, every old row kept
            model.resize_token_embeddings(tokens, pad_to_multiple_of=VOCAB_MULTIPLE)
        if model.config.pad_token_id is None and pad_token_id is not None:
            model.config.pad_token_id = model.generation_config.pad_token_id = pad_token_id
        return model
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
