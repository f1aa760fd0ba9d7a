"""The Trainer's collator, which gives each attention kernel its mask from the host, and --document_attention: inside a
packed block, each token attends only to the earlier tokens of its own document.

Why document attention: a block is documents packed end to end with an EOS after each (blocks.encode), so by default a
token also attends to the unrelated documents before it in the block: the model spends capacity on context that has
nothing to do with the text, and trains on contexts it never meets in generation, which starts a document from a lone
EOS. Positions restart AT each EOS: the EOS opens the document after it, as in generation (sampling.prompt_ids puts an
EOS before the prompt). The last token of a document still learns to predict the EOS, from its own document, and the
EOS predicts the next document's first token from nothing but itself, as a BOS does. RoPE positions count from each
document's start (position_ids).

Why the mask comes from here: left to build the mask itself, Transformers 5 (masking_utils.find_packed_sequence_indices)
reads the position_ids back with `if (...).all()` on every forward pass, a host-device synchronisation on a GPU, and
it treats restarting position_ids as packed documents only for some kernels (flash attention only at batch size 1).
So the collator builds, on the host where the batch already is, what each kernel needs:
- eager and sdpa: an explicit 4-D mask (causal, and block-diagonal by document with --document_attention), which
  Transformers passes through unread: boolean for sdpa, additive (0 or the float minimum) for eager;
- flash_attention_2/3: the micro-batch flattened into one row of B x T tokens with the sequence boundaries
  (cu_seq_lens_*, max_length_*) of its rows or documents, as DataCollatorWithFlattening does, so that the
  variable-length kernel keeps them apart at any batch size; each row's first label is -100, so no token learns
  to predict the next row's first token;
- flex_attention: position_ids only; Transformers builds its block mask from them, for any batch size (it reads them
  back once per forward pass).
Any other kernel, and any model with sliding-window layers, is refused with --document_attention (collator()): it might silently mix documents."""
import torch
from transformers import default_data_collator

from ..errors import UserError

MASKED = {"eager", "sdpa"}
FLATTENED = {"flash_attention_2", "flash_attention_3"}
DOCUMENT_KERNELS = MASKED | FLATTENED | {"flex_attention"}


def document_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Each token's distance from the latest EOS at or before it in its row (from the row's start before the first)."""
    index = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    starts = torch.where(input_ids == eos_token_id, index, torch.zeros_like(index))
    return index - starts.cummax(dim=-1).values


def attention_mask(positions: torch.Tensor, document: bool, kernel: str) -> torch.Tensor:
    """The (B or 1, 1, T, T) mask: key j is visible to query i when j <= i (and, by document, i - j <= position i)."""
    t = positions.shape[-1]
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    visible = (j <= i)[None, None]
    if document:
        visible = visible & ((i - j)[None, None] <= positions[:, None, :, None])
    if kernel == "eager":
        return torch.zeros(visible.shape).masked_fill_(~visible, torch.finfo(torch.float32).min)
    return visible


def flatten(batch: dict, positions: torch.Tensor) -> dict:
    """One row of B x T tokens with the varlen boundaries at every position 0 (each row's and each document's start)."""
    starts = (positions.reshape(-1) == 0).nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([positions.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    labels = batch["labels"].clone()
    labels[:, 0] = -100  # in rows the first label has no predecessor; in one row it would be the previous row's target
    return {"input_ids": batch["input_ids"].reshape(1, -1), "labels": labels.reshape(1, -1),
            "position_ids": positions.reshape(1, -1), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}


class AttentionCollator:
    """default_data_collator plus what the attention kernel needs (see the module's doc), and use_cache=False."""

    def __init__(self, eos_token_id: int, document_attention: bool, kernel: str):
        self.eos_token_id, self.document_attention, self.kernel = eos_token_id, document_attention, kernel
        self._causal = {}  # block length -> the plain causal mask, built once

    def __call__(self, features: list[dict]) -> dict:
        batch = default_data_collator(features)
        ids = batch["input_ids"]
        if self.document_attention:
            positions = document_positions(ids, self.eos_token_id)
        else:
            positions = torch.arange(ids.shape[-1]).expand_as(ids)
        if self.kernel in FLATTENED:
            batch = flatten(batch, positions)
        elif self.kernel in MASKED:
            if self.document_attention:
                batch["attention_mask"] = attention_mask(positions, True, self.kernel)
            else:
                t = ids.shape[-1]
                if t not in self._causal:
                    self._causal[t] = attention_mask(positions[:1], False, self.kernel)
                batch["attention_mask"] = self._causal[t]
        if self.document_attention:
            batch["position_ids"] = positions if self.kernel not in FLATTENED else batch["position_ids"]
        batch["use_cache"] = False  # an empty KV cache in training only costs memory
        return batch


def windowed(config) -> bool:
    """Whether some layers attend through a sliding window or chunks, which a full causal mask from here would undo."""
    types = getattr(config, "layer_types", None)
    if types:
        return any(t != "full_attention" for t in types)
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


def collator(eos_token_id: int, document_attention: bool, kernel: str = "sdpa", window: bool = False):
    """The Trainer's data collator for this attention kernel (the model's config._attn_implementation); window: the
    model has sliding-window layers (windowed()), whose masks Transformers builds itself."""
    if kernel not in DOCUMENT_KERNELS or window:
        if document_attention:
            why = (f"this model uses '{kernel}', which might let them attend to each other silently" if not window else
                   "this model has sliding-window layers, whose masks would lose either the window or the documents")
            raise UserError(f"--document_attention needs an attention kernel that can keep packed documents apart "
                            f"({', '.join(sorted(DOCUMENT_KERNELS))}) and no sliding-window layers; {why}. Set "
                            "attn_implementation to sdpa (or flash_attention_2 where installed) in the model's config.json, "
                            "use a model without sliding windows, or leave --document_attention off.")
        return default_data_collator  # Transformers builds the mask itself, from the batch as it is
    return AttentionCollator(eos_token_id, document_attention, kernel)
