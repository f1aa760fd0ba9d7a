"""The training-recipe options of the ablation study (issue 9) that a resumed run must keep, for its identity.

They live where they act: tokenizer_train_sample in tokenizer.py, muon_learning_rate in optim.py, document_attention in
attention.py."""

DEFAULTS = {"muon_learning_rate": None, "document_attention": False}


def identity(data_args, run_args) -> dict:
    """The options set away from their defaults, for the "training" part of a run's identity (rundir.check_identity).

    Defaults are left out, so the identity of a run that uses none of them is what it was before they existed, and its
    checkpoints still resume. tokenizer_train_sample needs no entry: a resume keeps the checkpoint's own tokenizer, and
    the tokenizer is part of the identity already."""
    values = {"muon_learning_rate": run_args.muon_learning_rate, "document_attention": data_args.document_attention}
    return {k: v for k, v in values.items() if v != DEFAULTS[k]}
