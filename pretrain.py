"""Pretrain a small GPT-style Chinese language model from scratch.

    python pretrain.py [configs/<preset>.yaml] [--option value ...]

Parse the options and launch one process per GPU; decide where the run continues from; load and split the documents,
tokenize them into blocks; build the model; train it with the Hugging Face Trainer (curves to SwanLab); save final/
and sample it; write its model card; publish it. Each step is one call into the package (zhpretrain/README.md
says which module does what).
"""
import os
import sys
import warnings
from pathlib import Path

from zhpretrain.errors import UserError, report


def main(argv=None, stop=None) -> int:
    from zhpretrain import config
    from zhpretrain.run import launch

    argv = list(sys.argv[1:] if argv is None else argv)
    preset, data_args, model_args, run_args, training_args = config.parse_args(argv)
    if cmd := launch.command(run_args.nproc_per_node, argv):
        launch.relaunch(cmd)  # does not return: this process becomes torchrun, which starts one process per GPU
    print(f"preset: {preset}", flush=True)
    # Here, not at the top: `--help` and the relaunch above need none of torch's and transformers' import time.
    from zhpretrain import hub
    from zhpretrain.run import folder
    from zhpretrain.train.callbacks import GracefulStop

    stop = stop or GracefulStop()
    # The Trainer's own push_to_hub would create the repo before training and push output_dir (checkpoints) at every
    # save; we publish final/ with its card once it is saved instead.
    hub_model_id = (training_args.hub_model_id or Path(training_args.output_dir).name) if training_args.push_to_hub else None
    hub_token = training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None  # the Trainer pickles its arguments into every save
    training_args.device  # noqa: B018  (sets up the process group, so the barrier below sees every rank)
    with training_args.main_process_first(local=True, desc="hub download"):  # one download per node, not one per rank
        given = hub.fetch(data_args, model_args)
    output_dir, lock = folder.setup(training_args, data_args, run_args)
    try:
        try:
            code = pretrain(data_args, model_args, run_args, training_args, preset, output_dir, stop, given)
        finally:
            lock.release()
        if code or training_args.process_index != 0:
            return code
        return hub.publish_final(output_dir / "final", hub_model_id, hub_token, run_args.push_to_modelscope)
    except KeyboardInterrupt:
        raise Interrupted(output_dir) from None


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C once output_dir is known: the message then says what is saved there."""

    def __init__(self, output_dir: Path):
        super().__init__(str(output_dir))
        self.output_dir = output_dir


def interrupted(output_dir) -> str:
    """What a Ctrl-C outside training leaves, read from the disk rather than assumed: final/ (it appears whole, see
    run/final.py) and the newest complete checkpoint. Caches are written whole or not at all, so they need no word."""
    if output_dir is None:
        return "interrupted before training started; nothing was saved. Run the same command to start again."
    from zhpretrain.run import checkpoint

    final, good = output_dir / "final", checkpoint.last_checkpoint(output_dir)
    saved = [f"{final} holds a saved model"] if (final / "README.md").is_file() else []
    if good:
        saved.append(f"the newest complete checkpoint is {good}")
    if not saved:
        return ("interrupted before training started or before its first checkpoint; nothing was saved. Run the same "
                "command to start again.")
    return f"interrupted: {'; '.join(saved)}. Run the same command to {'continue' if good else 'start again'}."


def pretrain(data_args, model_args, run_args, training_args, preset, output_dir: Path, stop, given: dict) -> int:
    from zhpretrain.data import blocks, prepare
    from zhpretrain.model import build
    from zhpretrain.report import card, tracking
    from zhpretrain.run import final, folder, resume
    from zhpretrain.train import trainer as training

    main_process, block_size = training_args.process_index == 0, data_args.block_size
    # Where the run continues from, decided before any tokenizing: a resume that cannot work is refused at once.
    shape = training.global_batch(training_args, block_size, data_args.streaming, run_args.global_batch_tokens)
    config = build.check_shape(model_args, block_size)  # an impossible shape fails here, not hours later
    start = resume.decide(output_dir, data_args, run_args, training_args, config, shape, model_args)
    # Documents -> train | test -> tokenizer -> token blocks.
    tok, datasets, meta = prepare.prepare(data_args, model_args, start.source, start,
                                          builder=training_args.local_process_index == 0,
                                          rank=training_args.process_index, world=training_args.world_size)
    start.record(output_dir, blocks.tokenizer_digest(tok))
    stats = prepare.describe(meta, output_dir, main_process)
    # The model, and room on disk for what it will write.
    model, params = build.build(model_args, training_args, tok, block_size, start)
    needed = 2 * folder.checkpoint_bytes(params["parameters"])
    if main_process and (problem := folder.space_problem(output_dir, needed, "a checkpoint and final/")):
        print(f"warning: {problem}; saving will stop the run with a clear message when space runs out.", flush=True)
    # Train, with the curves to SwanLab; then final/, its sample and its card.
    tracker = tracking.start(run_args, training_args, main_process=main_process,
                             config={"preset": str(preset), "data": vars(data_args), "model": vars(model_args),
                                     "run": vars(run_args), "training": training_args.to_dict(),
                                     "model_config": model.config.to_dict(), "data_stats": stats, **params, **shape},
                             checkpoint=start.checkpoint)
    trainer = training.build(model, tok, datasets, shape, start, stop, tracker, params, (data_args, run_args, training_args))
    try:
        if not training.fit(trainer, stop, start, output_dir):
            return 130
        # The card is written inside final/'s temporary folder, before it is renamed into place: final/ is never cardless.
        final.save_and_sample(trainer, output_dir, tracker, run_args.prompt, run_args.max_new_tokens,
                              card=lambda folder: card.write(folder, trainer.state, data_args, model_args, params, stats,
                                                             shape["sequences_per_step"] * block_size, len(tok), given))
        trainer.budget.report(tracker)
    finally:
        tracker.finish()
    return 0


if __name__ == "__main__":
    if sys.version_info < (3, 10):  # before the package is imported: its annotations need 3.10
        sys.exit(f"\nerror: zhpretrain needs Python >= 3.10; this is Python {sys.version.split()[0]} ({sys.executable}).\n")
    from zhpretrain.run import launch

    launch.adopt_slurm()  # tasks srun started get torchrun's names (RANK, ...) before anything reads them
    if os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # one console: rank 0 speaks for the launch; every rank's errors still show (stderr)
    if {"-h", "--help", "--help-all"} & set(sys.argv[1:]):
        from zhpretrain import config

        config.parse_args(sys.argv[1:])  # prints the help and exits; the short one before torch is imported
    print("zhpretrain: loading libraries ...", flush=True)  # at once: importing torch and transformers takes seconds
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, no source line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Writing model shards" bars under our progress bar
    from zhpretrain.train.callbacks import GracefulStop

    handler = GracefulStop()
    handler.install()  # from the start: a Ctrl-C at any moment gets a clean exit, a second one an immediate one
    try:
        sys.exit(main(stop=handler))
    except UserError as e:
        sys.exit(report(e))
    except KeyboardInterrupt as e:  # outside training (inside it, GracefulStop saves a checkpoint and stops)
        print("\n" + interrupted(getattr(e, "output_dir", None)), file=sys.stderr)
        sys.exit(130)
