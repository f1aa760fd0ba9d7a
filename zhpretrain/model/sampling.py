"""Continue a prompt with a causal LM: the one way text is sampled, by `python -m zhpretrain.generate` and by the
samples training logs at each evaluation."""
import sys

import torch
from transformers import TextStreamer

# Control characters but tab and newline, as their Unicode control pictures (U+2400 + code: \x00 is shown as ␀): a
# generated NUL or ESC must not reach a terminal, and a visible mark still tells what the model wrote.
_CONTROL = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}


def printable(text: str) -> str:
    return text.translate(_CONTROL)


def decode(tok, ids) -> str:
    """Generated ids as printable text. A byte-level tokenizer can stop inside a UTF-8 character: its first bytes then
    decode to U+FFFD at the end, a character cut in half, so that incomplete tail is dropped."""
    return printable(tok.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")


def prompt_ids(tok, prompt: str) -> list[int]:
    # Training saw documents joined by EOS, so a new document starts right after one.
    return [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]


def fit(ids: list[int], positions: int | None, max_new_tokens: int) -> list[int]:
    """EOS and as much of the prompt as the model's positions leave room for beside the new tokens: its last tokens, with
    one line on stderr saying so (beyond max_position_embeddings a model was never trained)."""
    if not positions:
        return ids
    if max_new_tokens > positions - 2:
        from ..errors import UserError

        raise UserError(f"--max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's {positions:,} positions "
                        f"(max_position_embeddings in its config.json): give at most {positions - 2:,}.")
    room = positions - max_new_tokens - 1  # prompt tokens after the EOS
    if len(ids) - 1 > room:
        print(f"note: the prompt is {len(ids) - 1:,} tokens; the model has {positions:,} positions and {max_new_tokens:,} go to "
              f"new tokens, so it continues from the prompt's last {room:,} tokens", file=sys.stderr, flush=True)
        ids = ids[:1] + ids[len(ids) - room:]
    return ids


class Streamer(TextStreamer):
    """transformers' TextStreamer writing what decode() returns: printable text, and at the end no half character.
    write() prints; a subclass may send the text elsewhere."""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        text = printable(text)
        self.write(text.rstrip("\ufffd") if stream_end else text, stream_end)

    def write(self, text: str, stream_end: bool) -> None:
        print(text, flush=True, end="\n" if stream_end else "")


def continue_prompt(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
                    top_k: int = 50, repetition_penalty: float = 1.1, seed: int | None = None, streamer=None) -> str:
    """The prompt followed by the model's continuation (temperature 0: greedy). Stops at EOS, the end of a document."""
    if seed is not None:
        torch.manual_seed(seed)
    ids = fit(prompt_ids(tok, prompt), getattr(model.config, "max_position_embeddings", None), max_new_tokens)
    ids = torch.tensor([ids], device=model.device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             repetition_penalty=repetition_penalty, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             streamer=streamer, **sampling)
    return prompt + decode(tok, out[0, ids.shape[1]:])



@torch.no_grad()
def sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Sample a continuation with a fixed seed, leaving the training RNG untouched (so resumed runs stay exact)."""
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # The same continuation as `python -m zhpretrain.generate` (from after an EOS, as training documents start).
        text = continue_prompt(model, tokenizer, prompt, max_new_tokens, temperature=0.8, top_p=1.0, top_k=50,
                               repetition_penalty=1.1, seed=0)
    model.train(was_training)
    return text


