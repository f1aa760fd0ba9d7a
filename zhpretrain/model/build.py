"""Build a GPT-style model from a config.json shape plus overrides (or load a causal LM to continue), and count its parameters."""
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, set_seed

from ..config import REPO, SHAPE_RANGES, out_of_range
from ..errors import UserError

VOCAB_MULTIPLE = 64  # tensor cores and fused kernels prefer embedding rows in multiples of 64
# The layers whose output is added to the residual stream: attention's and the MLP's output projections (Llama, Qwen2,
# Mistral ...: o_proj, down_proj; GPT-2: c_proj in both). --zero_init_residual starts them at zero.
RESIDUAL_OUTPUTS = ("o_proj", "down_proj", "c_proj")


def _read(model_args):
    if model_args.init_from:
        return model_args.init_from, init_config(model_args.init_from, model_args.trust_remote_code)
    path = model_args.model_config
    if not os.path.exists(path):
        raise UserError(f"model_config '{model_args.model_config}' does not exist. Use one of the shapes in "
                        f"{REPO / 'configs' / 'models'} or a folder holding a config.json.")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
        layers = getattr(config, "num_hidden_layers", None)
        explicit = set(_raw(path))
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
            explicit |= {kv.split("=")[0].strip() for kv in model_args.config_overrides.split(",")}
    except (OSError, ValueError) as e:
        raise UserError(f"Could not read the model config {path} with overrides '{model_args.config_overrides or ''}': {e}. "
                        "Fix the file, or use key=value pairs separated by commas in --config_overrides.") from None
    _follow_depth(config, layers, path)
    _follow_width(config, explicit)
    return path, config


def _raw(path: str) -> dict:
    """The keys config.json itself sets (the config object also holds every default)."""
    file = Path(path) / "config.json" if os.path.isdir(path) else Path(path)
    return json.loads(file.read_text(encoding="utf-8"))


def _follow_width(config, explicit: set) -> None:
    """Llama and Qwen2 configs store head_dim = hidden_size // num_attention_heads when built; an override of either
    leaves it stale (attention 256 wide in a 130-wide model). Unless head_dim was set on purpose, it follows."""
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if "head_dim" not in explicit and getattr(config, "head_dim", None) and heads and hidden:
        config.head_dim = hidden // heads


def _follow_depth(config, old_layers: int | None, path: str) -> None:
    """Per-layer lists (Qwen2's layer_types) keep their old length when num_hidden_layers is overridden: a deeper model
    then fails to build and a shallower one fails at its first save, hours later. A uniform list follows the new depth;
    a mixed one cannot be guessed."""
    layers = getattr(config, "num_hidden_layers", None)
    if layers == old_layers:
        return
    for name in ("layer_types", "mlp_layer_types"):
        values = getattr(config, name, None)
        if not isinstance(values, list) or len(values) == layers:
            continue
        if len(set(values)) > 1:
            raise UserError(f"{path} lists {len(values)} different {name} ({', '.join(sorted(set(values)))}), one per layer, "
                            f"so num_hidden_layers={layers} cannot be applied by --config_overrides. Copy {path}, set "
                            f"num_hidden_layers and {name} there, and pass it as --model_config.")
        setattr(config, name, values[:1] * layers)


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


def check_config(config, model_args, block_size: int) -> None:
    """Refuse a shape that cannot train or cannot be saved, before any tokenizing or training."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    problems = out_of_range(config, SHAPE_RANGES)  # a zero or negative size (the checks below skip zeros)
    if heads and hidden and hidden % heads and (getattr(config, "head_dim", None) or hidden // heads) * heads != hidden:
        problems.append(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}: each head would be "
                        f"{hidden / heads:g} wide")
    if heads and kv_heads and heads % kv_heads:
        problems.append(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads} "
                        "(grouped-query attention shares each key/value head among a whole number of query heads)")
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if head_dim and getattr(config, "rope_parameters", None) and head_dim % 2:
        problems.append(f"the head dimension {head_dim} is odd, and rotary position embeddings rotate pairs of dimensions")
    if not problems:
        try:
            config.validate()
        except Exception as e:  # huggingface_hub's strict-dataclass errors wrap a ValueError; the message is what matters
            problems.append(" ".join(str(e).split()))
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        problems.append(f"block_size {block_size} is larger than the model's position limit {positions} (max_position_embeddings)")
    if problems:
        raise UserError(f"The model shape from {Path(model_args.init_from or model_args.model_config).name} with --config_overrides "
                        f"'{model_args.config_overrides or ''}' "
                        f"cannot train: {'; '.join(problems)}. Fix --config_overrides or --model_config (or --block_size); "
                        "nothing was tokenized or trained yet.")


def check_shape(model_args, block_size: int):
    """The shape checks that need only the config: run before hours of tokenizing, not after. Returns the config."""
    config = _read(model_args)[1]
    check_config(config, model_args, block_size)
    return config


def build_config(model_args, tokenizer, block_size: int):
    path, config = _read(model_args)
    if model_args.init_from:
        pass  # the weights fix the vocabulary; build_model grows it only if the tokenizer has more tokens
    elif "vocab_size" not in (model_args.config_overrides or ""):
        config.vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if config.vocab_size < len(tokenizer) and not model_args.init_from:
        raise UserError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}. "
                        f"Remove vocab_size from config_overrides or set it to at least {len(tokenizer)}.")
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if model_args.init_from and tokenizer.pad_token_id >= config.vocab_size:
        # A pad we added beyond the weights' rows: some models index an embedding row with it while being built, so it is
        # set once build_model has grown the embeddings.
        config.pad_token_id = None
    check_config(config, model_args, block_size)
    return config


def build_model(config, seed: int, weights: str | None = None, init_from: str | None = None, tokens: int = 0,
                pad_token_id: int | None = None, zero_init_residual: bool = False):
    """A randomly initialised model, the weights of a causal LM to continue (init_from), or the safetensors weights of a
    finished checkpoint. tokens and pad_token_id: the tokenizer's size, which a continued model's vocabulary must
    cover, and its pad. zero_init_residual: a random model's residual output projections start at zero."""
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
        model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"Cannot build a causal language model from this config ({type(e).__name__}: {e}). "
                        "Check --model_config and --config_overrides.") from None
    if zero_init_residual:
        zero_residual_outputs(model)
    return model


def zero_residual_outputs(model) -> None:
    """Zero the weights of every layer that writes into the residual stream, so that each block starts as the identity
    and the model as embedding -> final norm -> output layer (their inputs still get gradients: the weights' gradient
    is input x upstream gradient). modded-nanogpt's speedrun and nanochat zero these projections; here the gain shrank
    with size, 0.023 / 0.007 / 0.001 bits/byte at depth 2 / 3 / 4 (docs/recipe.md), so the dial leaves it off."""
    zeroed = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS and hasattr(m, "weight")]
    if not zeroed:
        raise UserError(f"--zero_init_residual: this {model.config.model_type} model has no layer named "
                        f"{', '.join(RESIDUAL_OUTPUTS)} (the residual output projections it zeroes). Set --zero_init_residual false.")
    with torch.no_grad():
        for m in zeroed:
            m.weight.zero_()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()


def numel(p) -> int:
    """A parameter's real size: under DeepSpeed ZeRO-3 each rank holds an empty placeholder (numel 0) whose size is
    ds_numel; an FSDP2 DTensor already reports its global size."""
    return getattr(p, "ds_numel", None) or p.numel()


def count_parameters(model) -> dict:
    embeddings = {id(p): numel(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    total = sum(numel(p) for p in model.parameters())
    return {"parameters": total, "embedding_parameters": sum(embeddings.values()),
            "non_embedding_parameters": total - sum(embeddings.values())}


def build(model_args, training_args, tok, block_size: int, resume):
    """The model: random init, or the weights of a checkpoint that already finished. Returns (model, parameter counts)."""
    config = build_config(model_args, tok, block_size)
    model = build_model(config, training_args.seed, weights=resume.checkpoint if resume.done else None,
                        init_from=model_args.init_from, tokens=len(tok), pad_token_id=tok.pad_token_id,
                        zero_init_residual=model_args.zero_init_residual)
    params = count_parameters(model)
    print(f"model: {config.model_type}, {params['parameters'] / 1e6:.2f}M parameters ({params['embedding_parameters'] / 1e6:.2f}M "
          f"embedding, {params['non_embedding_parameters'] / 1e6:.2f}M other)", flush=True)
    return model, params
