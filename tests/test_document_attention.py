"""--document_attention: position_ids that restart at each EOS keep attention inside each packed document."""
import torch
from transformers import AutoConfig, AutoModelForCausalLM, default_data_collator, set_seed

from conftest import REPO
from zhpretrain.model.attention import DocumentAttentionCollator, document_positions

EOS = 7


def test_positions_restart_at_each_eos():
    ids = torch.tensor([[5, 6, EOS, 8, 9, 10, EOS, EOS, 4],
                        [EOS, 1, 2, 3, 4, 5, 6, 8, 9],
                        [1, 2, 3, 4, 5, 6, 8, 9, 10]])
    assert document_positions(ids, EOS).tolist() == [[0, 1, 0, 1, 2, 3, 0, 0, 1],
                                                      [0, 1, 2, 3, 4, 5, 6, 7, 8],
                                                      [0, 1, 2, 3, 4, 5, 6, 7, 8]]


def test_a_document_in_a_block_sees_only_itself():
    set_seed(0)
    config = AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json")  # sdpa, fp32, on the CPU
    model = AutoModelForCausalLM.from_config(config).eval()
    rng = torch.Generator().manual_seed(0)
    first, second, third = (torch.randint(8, 4096, (n,), generator=rng) for n in (11, 9, 12))
    block = torch.cat([first, torch.tensor([EOS]), second, torch.tensor([EOS]), third])  # as blocks.encode packs them
    alone = torch.cat([torch.tensor([EOS]), second])  # the second document as generation starts one: after an EOS
    where = slice(len(first), len(first) + len(alone))
    features = [{"input_ids": block, "labels": block}] * 2

    with torch.no_grad():
        reference = model(input_ids=alone[None]).logits[0]
        isolated = model(**DocumentAttentionCollator(EOS)(features)).logits[1, where]
        crossing = model(**default_data_collator(features)).logits[1, where]
    assert torch.allclose(isolated, reference, atol=1e-4), (isolated - reference).abs().max()
    assert (crossing - reference).abs().max() > 0.1  # today's default: the first document leaks in


def test_the_trainer_uses_the_collator_only_when_asked():
    from zhpretrain.data import tokenizer
    from zhpretrain.model.attention import collator

    tok = tokenizer.train(iter(["长江是中国最长的河流。"] * 20), vocab_size=300, max_chars=10**6)
    on, off = collator(tok.eos_token_id, True), collator(tok.eos_token_id, False)
    assert isinstance(on, DocumentAttentionCollator) and on.eos_token_id == tok.eos_token_id
    assert off is default_data_collator


def test_document_attention_enters_the_run_identity_only_when_set():
    from zhpretrain.run import resume
    from zhpretrain.config import DataArguments, RunArguments

    assert resume.recipe_identity(DataArguments(), RunArguments()) == {}  # runs started before the option existed still resume
    assert resume.recipe_identity(DataArguments(document_attention=True), RunArguments()) == {"document_attention": True}
