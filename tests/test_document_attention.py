"""--document_attention: position_ids that restart at each EOS keep attention inside each packed document."""
import importlib.util

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, default_data_collator, set_seed

from conftest import REPO
from zhpretrain.errors import UserError
from zhpretrain.model.attention import AttentionCollator, collator, document_positions

EOS = 7


def test_positions_restart_at_each_eos():
    ids = torch.tensor([[5, 6, EOS, 8, 9, 10, EOS, EOS, 4],
                        [EOS, 1, 2, 3, 4, 5, 6, 8, 9],
                        [1, 2, 3, 4, 5, 6, 8, 9, 10]])
    assert document_positions(ids, EOS).tolist() == [[0, 1, 0, 1, 2, 3, 0, 0, 1],
                                                      [0, 1, 2, 3, 4, 5, 6, 7, 8],
                                                      [0, 1, 2, 3, 4, 5, 6, 7, 8]]


def demo_model(kernel: str):
    set_seed(0)
    config = AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json", attn_implementation=kernel)
    return AutoModelForCausalLM.from_config(config).eval()  # fp32, on the CPU


def test_a_document_in_a_block_sees_only_itself():
    model = demo_model("sdpa")
    rng = torch.Generator().manual_seed(0)
    first, second, third = (torch.randint(8, 4096, (n,), generator=rng) for n in (11, 9, 12))
    block = torch.cat([first, torch.tensor([EOS]), second, torch.tensor([EOS]), third])  # as blocks.encode packs them
    alone = torch.cat([torch.tensor([EOS]), second])  # the second document as generation starts one: after an EOS
    where = slice(len(first), len(first) + len(alone))
    features = [{"input_ids": block, "labels": block}] * 2

    with torch.no_grad():
        reference = model(input_ids=alone[None]).logits[0]
        isolated = model(**AttentionCollator(EOS, True, "sdpa")(features)).logits[1, where]
        crossing = model(**default_data_collator(features)).logits[1, where]
    assert torch.allclose(isolated, reference, atol=1e-4), (isolated - reference).abs().max()
    assert (crossing - reference).abs().max() > 0.1  # today's default: the first document leaks in


def test_the_trainer_uses_the_collator_only_when_asked():
    from zhpretrain.data import tokenizer
    from zhpretrain.model.attention import collator

    tok = tokenizer.train(iter(["长江是中国最长的河流。"] * 20), vocab_size=300, max_chars=10**6)
    on, off = collator(tok.eos_token_id, True), collator(tok.eos_token_id, False)
    assert isinstance(on, AttentionCollator) and on.eos_token_id == tok.eos_token_id and on.document_attention
    assert isinstance(off, AttentionCollator) and not off.document_attention
    assert collator(tok.eos_token_id, False, "some_hub_kernel") is default_data_collator


def test_a_kernel_that_cannot_keep_documents_apart_is_refused():
    with pytest.raises(UserError, match="--document_attention needs an attention kernel.*'some_hub_kernel'"):
        collator(EOS, True, "some_hub_kernel")


def test_sliding_window_models_keep_their_own_masks():
    """A full causal mask from the collator would undo a sliding window: such models get Transformers' own masks, and
    document attention is refused for them."""
    from zhpretrain.model.attention import windowed

    plain = AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json")
    sliding = AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json", sliding_window=16,
                                         layer_types=["full_attention"] * 2 + ["sliding_attention"] * 2)
    assert not windowed(plain) and windowed(sliding), sliding.layer_types
    assert collator(EOS, False, "sdpa", windowed(sliding)) is default_data_collator
    with pytest.raises(UserError, match="sliding-window layers"):
        collator(EOS, True, "sdpa", windowed(sliding))


KERNELS = ["eager", "sdpa",
           pytest.param("flash_attention_2", marks=pytest.mark.skipif(not importlib.util.find_spec("flash_attn") or
                                                                       not torch.cuda.is_available(), reason="no flash-attn")),
           pytest.param("flex_attention", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="flex attention runs compiled, on a GPU"))]


@pytest.mark.parametrize("kernel", KERNELS)
def test_documents_in_a_packed_batch_of_four_rows(kernel):
    """Each row of a batch of 4 packs several documents; every document's logits equal those of the document alone
    (after the EOS that opens it), whatever the kernel: no row and no document sees another."""
    device = "cuda" if kernel in ("flash_attention_2", "flex_attention") else "cpu"
    dtype = torch.bfloat16 if kernel == "flash_attention_2" else torch.float32
    model = demo_model(kernel).to(device, dtype)
    rng = torch.Generator().manual_seed(1)
    rows, documents = [], []
    for lengths in ((11, 9, 12), (20, 13), (7, 7, 7, 8), (33,)):
        row, spans = [torch.tensor([EOS])], []
        for n in lengths:
            doc = torch.randint(8, 4096, (n,), generator=rng)
            spans.append((sum(len(p) for p in row) - 1, torch.cat([torch.tensor([EOS]), doc])))
            row += [doc, torch.tensor([EOS])]
        rows.append(torch.cat(row)[:34])
        documents.append([(start, alone[:34 - start]) for start, alone in spans if start < 33])
    features = [{"input_ids": r, "labels": r} for r in rows]
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in AttentionCollator(EOS, True, kernel)(features).items()}
    with torch.no_grad():
        packed = model(**batch).logits.reshape(4, 34, -1)
        worst = 0.0
        for r, docs in enumerate(documents):
            for start, alone in docs:
                reference = model(input_ids=alone[None].to(device)).logits[0]
                worst = max(worst, (packed[r, start:start + len(alone)] - reference).abs().max().item())
        crossing = model(**{k: v.to(device) for k, v in default_data_collator(features).items()}).logits
    assert worst < (5e-2 if dtype == torch.bfloat16 else 1e-4), (kernel, worst)
    assert (crossing[1, 20:34] - packed[1, 20:34]).abs().max() > 0.1  # without it, the second document sees the first


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_plain_collator_matches_the_model_s_own_causal_mask(kernel):
    """Without --document_attention the explicit mask changes nothing: the same logits as the model's own mask."""
    model = demo_model(kernel)
    ids = torch.randint(8, 4096, (3, 40), generator=torch.Generator().manual_seed(2))
    features = [{"input_ids": r, "labels": r} for r in ids]
    with torch.no_grad():
        ours = model(**AttentionCollator(EOS, False, kernel)(features)).logits
        theirs = model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_document_attention_enters_the_run_identity_only_when_set():
    from zhpretrain.run import resume
    from zhpretrain.config import DataArguments, ModelArguments, RunArguments

    assert resume.recipe_identity(DataArguments(), RunArguments(), ModelArguments()) == {}  # runs started before the option existed still resume
    assert resume.recipe_identity(DataArguments(document_attention=True), RunArguments(), ModelArguments()) == {"document_attention": True}


def test_flash_gets_one_row_with_the_boundaries_of_rows_and_documents():
    """What the variable-length flash kernel is given (it cannot run here): one row of B x T tokens, the start of every
    row and document in cu_seq_lens, the longest piece, and no label that would cross from one row into the next."""
    ids = torch.tensor([[5, 6, EOS, 8, 9], [1, 2, 3, 4, 5]])
    batch = AttentionCollator(EOS, True, "flash_attention_2")([{"input_ids": r, "labels": r} for r in ids])
    assert batch["input_ids"].tolist() == [[5, 6, EOS, 8, 9, 1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 2, 5, 10]
    assert batch["max_length_q"] == batch["max_length_k"] == 5
    assert batch["labels"].tolist() == [[-100, 6, EOS, 8, 9, -100, 2, 3, 4, 5]]
    plain = AttentionCollator(EOS, False, "flash_attention_2")([{"input_ids": r, "labels": r} for r in ids])
    assert plain["cu_seq_lens_q"].tolist() == [0, 5, 10] and "attention_mask" not in plain
