"""--document_attention: inside a packed block, each token attends only to the earlier tokens of its own document.

Why: a block is documents packed end to end with an EOS after each (blocks.encode), so by default a token also attends
to the unrelated documents before it in the block: the model spends capacity on context that has nothing to do with the
text, and trains on contexts it never meets in generation, which starts a document from a lone EOS.

How: Transformers 5 reads packed documents from position_ids that restart at 0. When a forward pass gets position_ids
but no attention_mask and no KV cache, masking_utils.find_packed_sequence_indices starts a new document wherever the
next position is not the previous one plus 1, and the causal mask becomes block-diagonal, one block per document (sdpa,
eager and flex masks; flash attention uses its variable-length kernels instead). RoPE positions then count from each
document's start too. Models switch a KV cache on by default (config.use_cache), even in training, and an empty cache
turns this detection off: the collator passes use_cache=False.

Positions restart AT each EOS: the EOS opens the document after it, as in generation (sampling.prompt_ids puts an EOS
before the prompt). The last token of a document still learns to predict the EOS, from its own document, and the EOS
predicts the next document's first token from nothing but itself, as a BOS does."""
import torch
from transformers import default_data_collator


def document_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Each token's distance from the latest EOS at or before it in its row (from the row's start before the first)."""
    index = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    starts = torch.where(input_ids == eos_token_id, index, torch.zeros_like(index))
    return index - starts.cummax(dim=-1).values


class DocumentAttentionCollator:
    """default_data_collator, plus position_ids that restart at each EOS and use_cache=False (see the module's doc)."""

    def __init__(self, eos_token_id: int):
        self.eos_token_id = eos_token_id

    def __call__(self, features: list[dict]) -> dict:
        batch = default_data_collator(features)
        batch["position_ids"] = document_positions(batch["input_ids"], self.eos_token_id)
        batch["use_cache"] = False
        return batch


def collator(eos_token_id: int, document_attention: bool):
    """The Trainer's data collator: document attention's when asked, else the default one."""
    from transformers import default_data_collator

    return DocumentAttentionCollator(eos_token_id) if document_attention else default_data_collator
