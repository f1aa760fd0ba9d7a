"""Continue prompts from any Hugging Face causal LM folder, streaming the tokens to the terminal.

    python -m zhpretrain.generate runs/demo/final --prompt 陕西省是
    python -m zhpretrain.generate runs/demo/checkpoint-300        # interactive: one prompt per line, Ctrl-D to leave
"""
import argparse
import sys
from pathlib import Path

from .errors import UserError, cli

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def tokenizer_folder(model_dir: Path, tokenizer: str | None = None) -> Path:
    """Where the tokenizer is: --tokenizer, the model folder, or (for a checkpoint without one) the run's final/."""
    if tokenizer:
        return Path(tokenizer)
    for folder in (model_dir, model_dir.parent / "final"):
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    raise UserError(f"'{model_dir}' holds a model but no tokenizer, and there is none in '{model_dir.parent / 'final'}' either. "
                    "Pass the folder of the tokenizer it was trained with: --tokenizer runs/<run>/final (or the tokenizer "
                    "cache folder that training printed on its 'tokenizer:' line).")


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # torch.save files: unpickling them can run any code


def check_model_folder(model_dir: Path) -> None:
    if not model_dir.exists():
        raise UserError(f"The model folder '{model_dir}' does not exist. Pass a folder written by training, such as "
                        "runs/demo/final or runs/demo/checkpoint-300.")
    pickled = sorted(p.name for pattern in PICKLED for p in model_dir.glob(pattern))
    if pickled and not any(model_dir.glob("*.safetensors")):
        raise UserError(f"'{model_dir}' holds its weights only as {', '.join(pickled)}, a pickle, which can run code when it "
                        "is loaded: this tool loads only safetensors files (model.safetensors, as training writes them), "
                        f"so it loaded nothing.{'' if (model_dir / 'config.json').is_file() else ' It has no config.json either.'} "
                        "If you trust the file, convert it once with transformers: AutoModelForCausalLM.from_pretrained("
                        "folder, use_safetensors=False).save_pretrained(folder), then run this again.")
    if not (model_dir / "config.json").is_file():
        hint = f" It looks like a run folder: pass '{model_dir / 'final'}'." if (model_dir / "final" / "config.json").is_file() else ""
        raise UserError(f"'{model_dir}' is not a Hugging Face model folder: it has no config.json.{hint} Pass a folder such as "
                        "runs/demo/final or runs/demo/checkpoint-300.")


def load(model_dir, tokenizer: str | None = None, **model_kwargs):
    """(model in eval mode, tokenizer) from a model folder; every failure is a UserError."""
    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # generation-config chatter and loading bars would interleave with the streamed text
    logging.disable_progress_bar()
    tok_dir = tokenizer_folder(model_dir, tokenizer)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, **model_kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"Cannot load a causal language model from '{model_dir}': {e}. The folder must hold config.json and "
                        "the weights (model.safetensors), as training writes them into final/ and checkpoint-N/.") from None
    try:
        tok = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"Cannot load a tokenizer from '{tok_dir}': {e}. Pass the right one with --tokenizer.") from None
    if tok.eos_token_id is None:
        raise UserError(f"The tokenizer in '{tok_dir}' has no EOS token, so generation cannot start at a document boundary.")
    if len(tok) > model.config.vocab_size:
        raise UserError(f"The tokenizer in '{tok_dir}' has {len(tok):,} tokens but the model only {model.config.vocab_size:,}: "
                        "they do not belong together. Pass the tokenizer the model was trained with (--tokenizer).")
    return model.eval(), tok


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m zhpretrain.generate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # ArgumentDefaultsHelpFormatter adds "(default: X)" to each help text that names no default itself.
    p.add_argument("model_dir", help="a causal LM folder: a run's final/ or one of its checkpoint-N/")
    p.add_argument("--prompt", default=argparse.SUPPRESS,
                   help="continue this text and exit (default: read one prompt per line from stdin)")
    p.add_argument("--tokenizer", default=argparse.SUPPRESS, help="tokenizer folder (default: the model folder, else the run's final/)")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens generated per prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 means greedy")
    p.add_argument("--top_p", type=float, default=0.95, help="nucleus sampling: keep the smallest set of tokens with this mass")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens (0: no limit)")
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="above 1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="random seed: the same seed and prompt give the same text (default: none, a new text each time)")
    args = p.parse_args(argv)
    for name in ("prompt", "tokenizer", "seed"):  # SUPPRESS keeps "(default: None)" out of --help: set them here
        setattr(args, name, getattr(args, name, None))
    return args


def check_options(args) -> None:
    # Out-of-range values would otherwise surface as a ValueError deep inside transformers, after the model loaded.
    bad = [f"--{name} {getattr(args, name)} (must be {rule})" for name, rule, ok in (
        ("max_new_tokens", "at least 1", args.max_new_tokens >= 1), ("temperature", "0 or more", args.temperature >= 0),
        ("top_p", "above 0 and at most 1", 0 < args.top_p <= 1), ("top_k", "0 or more", args.top_k >= 0),
        ("repetition_penalty", "above 0", args.repetition_penalty > 0)) if not ok]
    if bad:
        raise UserError("Invalid option: " + "; ".join(bad) + ".")


def main(argv=None) -> int:
    args = parse_args(argv)
    check_options(args)
    from .model.sampling import Streamer, continue_prompt, fit  # torch and transformers (seconds): after --help and the checks

    model, tok = load(args.model_dir, args.tokenizer)
    fit([tok.eos_token_id], getattr(model.config, "max_position_embeddings", None), args.max_new_tokens)  # before any text
    streamer = Streamer(tok, skip_prompt=True, skip_special_tokens=True)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   repetition_penalty=args.repetition_penalty, streamer=streamer)

    def answer(prompt: str, seed: int | None) -> None:
        print(prompt, end="", flush=True)  # the streamer prints only the new tokens, and ends the line
        try:
            continue_prompt(model, tok, prompt, seed=seed, **options)
        except KeyboardInterrupt:
            streamer.end()  # the text it still holds (a word not yet finished), and the line's end
            raise

    if args.prompt is not None:
        answer(args.prompt, args.seed)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{args.model_dir}: type a beginning and press Enter; Ctrl-D to leave.", file=sys.stderr)
    seed = args.seed  # seeded once: a session with a seed replays the same way
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        if line.strip():
            answer(line.strip(), seed)
            seed = None


if __name__ == "__main__":
    cli(main)
