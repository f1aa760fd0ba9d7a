"""Continue a prompt with a causal LM: the one way text is sampled, by `python -m zhpretrain.generate` and by the
samples training logs at each evaluation."""
import torch


def prompt_ids(tok, prompt: str) -> list[int]:
    # Training saw documents joined by EOS, so a new document starts right after one.
    return [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]


def continue_prompt(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
                    top_k: int = 50, repetition_penalty: float = 1.1, seed: int | None = None, streamer=None) -> str:
    """The prompt followed by the model's continuation (temperature 0: greedy). Stops at EOS, the end of a document."""
    if seed is not None:
        torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids(tok, prompt)], device=model.device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             repetition_penalty=repetition_penalty, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             streamer=streamer, **sampling)
    return prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)



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


