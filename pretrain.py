"""Pretrain a small GPT-style Chinese language model from scratch.

    python pretrain.py [configs/<preset>.yaml] [--option value ...]

Load the documents, split them, train (or load) a tokenizer, cut the text into token blocks, build a model,
train it with the Hugging Face Trainer (curves to SwanLab), save it, and print a sample continuation.
"""
import json
import os
import socket
import sys
import warnings
from pathlib import Path

from zhpretrain.errors import UserError, report

DOMINANT_SHARE = 0.5  # one evaluation document above this share of the evaluation text is reported


def check_eval_split(test: dict, block_size: int) -> None:
    if test["blocks"] == 0:
        raise UserError(f"The evaluation split has {test['tokens']:,} tokens in {test['documents']:,} documents, fewer than "
                        f"one block of {block_size}. Raise --validation_split_percentage, give a --validation_file, "
                        "or lower --block_size.")


def data_source(data_args) -> dict:
    """What the data is: files (with content fingerprints) or a hub id, and how it is split. Keys the caches and the run."""
    from zhpretrain import data

    if data_args.dataset_name:
        source = {"dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name}
    else:
        files, skipped = data.data_files(data_args.train_file)
        if skipped:
            print(f"train_file: skipped {len(skipped)} files that are not data: {', '.join(skipped[:8])}"
                  f"{' ...' if len(skipped) > 8 else ''}", flush=True)
        source = {"files": data.fingerprint(files)}
    if data_args.validation_file:
        source["validation"] = data.fingerprint(data.find_files(data_args.validation_file, "validation_file"))
    source.update(text_column=data_args.text_column, skip_bad_records=data_args.skip_bad_records, split_seed=data_args.split_seed,
                  validation_split_percentage=data_args.validation_split_percentage,
                  validation_split_documents=data_args.validation_split_documents)
    return source


def prepare_data(data_args, model_args, source: dict, builder: bool, rank: int = 0, world: int = 1, resumed: str | None = None):
    """Documents -> train | test -> tokenizer -> token blocks (cached, or streamed): return (tokenizer, datasets, meta).

    A resumed run keeps the tokenizer saved in its checkpoint: its embeddings were trained for exactly that one; a
    continued model (--init_from) brings its own."""
    import torch

    from zhpretrain import blocks, cache, data, tokenizer

    root = data_args.cache_root()
    if model_args.tokenizer_name_or_path:
        name = model_args.tokenizer_name_or_path
        tok, how = tokenizer.load(name, model_args.trust_remote_code, root), f"loaded {name}"
    elif resumed and (Path(resumed) / "tokenizer.json").is_file():
        tok, how = tokenizer.load(resumed), f"the one saved in {resumed}"
    elif model_args.init_from:
        tok, how = tokenizer.load(model_args.init_from, model_args.trust_remote_code, root), f"loaded {model_args.init_from}"
    else:
        folder = tokenizer.cache_folder(root, source, model_args)
        cache.once(folder, lambda tmp: tokenizer.train_and_save(data_args, model_args, tmp), builder, "tokenizer cache")
        tok, how = tokenizer.load(str(folder)), f"byte-level BPE from {folder}"
    print(f"tokenizer: {len(tok):,} tokens ({how})", flush=True)

    if data_args.streaming:
        from zhpretrain import stream

        test, test_stats = stream.eval_blocks(data_args, tok, data_args.max_eval_samples or 256)
        check_eval_split(test_stats, data_args.block_size)
        meta = {"stats": {"train": {"streaming": True}, "test": test_stats}}
        return tok, {"train": stream.StreamingBlocks(data_args, tok, rank, world), "test": test}, meta

    folder = blocks.cache_folder(root, {**source, "tokenizer": blocks.tokenizer_digest(tok), "block_size": data_args.block_size})
    stats = data.ReadStats()
    cache.once(folder, lambda tmp: blocks.write(tmp, data.documents(data_args, stats), tok, data_args.block_size, stats.bytes),
               builder, "token cache")
    meta = blocks.load(folder)
    if stats.records:
        print(f"read {stats.records:,} records: {stats.empty:,} empty texts dropped, {stats.skipped:,} bad records skipped", flush=True)
    datasets = blocks.datasets(folder, meta)
    check_eval_split(meta["stats"]["test"], data_args.block_size)
    if len(datasets["train"]) == 0:
        raise UserError(f"The training split has {meta['stats']['train']['tokens']:,} tokens, fewer than one block of "
                        f"{data_args.block_size}. Give more data or lower --block_size.")
    if data_args.max_eval_samples:
        datasets["test"] = torch.utils.data.Subset(datasets["test"], range(min(data_args.max_eval_samples, len(datasets["test"]))))
    return tok, datasets, meta


def writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{socket.gethostname()}-{os.getpid()}"  # one per process: ranks share the folder
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} '{folder}' cannot be written ({e.strerror}). Choose another --{what}.") from None


def setup(training_args, data_args, run_args):
    """Check the folders we write, set up the process group the way the Trainer will use it (gloo on CPU, NCCL on GPUs),
    and lock output_dir for this run (the main process holds the lock for the whole launch)."""
    import torch

    from zhpretrain import rundir

    output_dir = Path(training_args.output_dir)
    training_args.ddp_find_unused_parameters = False
    training_args.dataloader_pin_memory &= torch.cuda.is_available()
    training_args.report_to = [r for r in training_args.report_to if r != "swanlab"]  # we add SwanLab's callback ourselves
    training_args.device  # noqa: B018  (reading it initialises the process group, if parsing has not already)
    rundir.check_folder(output_dir, run_args.allow_existing_output_dir)
    if torch.distributed.is_initialized():
        # Every rank looks at output_dir before any rank writes its probe or the lock into it: otherwise a fast rank's
        # probe file makes a slow rank see a foreign, non-empty folder and refuse it.
        torch.distributed.barrier()
    writable(output_dir, "output_dir")
    writable(data_args.cache_root(), "cache_dir")
    lock = rundir.Lock(output_dir)
    if training_args.process_index == 0:
        lock.acquire()
    return output_dir, lock


def identity(data_source: dict, training_args, config) -> dict:
    """What makes this run this run: a resume with other values would mix two runs (see rundir.check_identity)."""
    keys = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay",
            "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "max_grad_norm", "max_steps", "seed")
    training = {k: getattr(training_args, k) for k in keys if hasattr(training_args, k)}
    if training_args.max_steps <= 0:
        training["num_train_epochs"] = training_args.num_train_epochs
    skip = {"vocab_size", "eos_token_id", "bos_token_id", "pad_token_id", "transformers_version", "_name_or_path", "dtype",
            "id2label", "label2id"}
    model = {k: v for k, v in config.to_dict().items() if k not in skip}
    # As it reads back from zhpretrain_run.json (JSON has no integer keys or tuples), so equal settings compare equal.
    return json.loads(json.dumps({"data": data_source, "training": training, "model": model}, default=str))


def resume_point(output_dir: Path, data_args, model_args, run_args, training_args, main_process: bool):
    """The newest checkpoint that really loads, checked against the identity of the run that wrote it, before any
    tokenizing: returns (checkpoint or None, data source, this run's identity)."""
    from zhpretrain import model as modeling
    from zhpretrain import rundir

    config = modeling.check_shape(model_args, data_args.block_size)  # an impossible shape fails here, not hours later
    checkpoint = rundir.last_checkpoint(output_dir, move_aside=main_process)
    source = data_source(data_args)
    run_identity = identity(source, training_args, config)
    from zhpretrain import recipe  # Muon and document attention, when set, are part of the identity
    run_identity["training"].update(recipe.identity(data_args, run_args))
    if checkpoint:
        rundir.check_identity(output_dir, checkpoint, run_identity, run_args.allow_resume_changes)
    return checkpoint, source, run_identity


def record_identity(output_dir: Path, checkpoint: str | None, run_identity: dict, tok, main_process: bool) -> None:
    """Add the tokenizer to the identity (a resume must keep it) and record the identity in output_dir."""
    from zhpretrain import blocks, rundir

    run_identity["tokenizer"] = blocks.tokenizer_digest(tok)
    if checkpoint:
        rundir.check_identity(output_dir, checkpoint, {"tokenizer": run_identity["tokenizer"]}, allow=False)
    if main_process:
        rundir.write_identity(output_dir, run_identity)


def describe_data(meta: dict, output_dir: Path, main_process: bool) -> dict:
    stats = {s: meta["stats"][s] for s in ("train", "test")}
    print("data: " + "; ".join(f"{s}: streamed from the files" if v.get("streaming") else
                               f"{s}: {v['documents']:,} documents, {v['tokens']:,} tokens, {v['blocks']:,} blocks "
                               f"({v['tokens_in_blocks'] / max(v['tokens'], 1):.2%} of tokens in blocks)"
                               for s, v in stats.items()), flush=True)
    test = stats["test"]
    share = test.get("largest_document_bytes", 0) / max(test.get("bytes", 0), 1)
    if share > DOMINANT_SHARE and test.get("documents", 0) > 1:
        print(f"warning: one document holds {share:.0%} of the evaluation text ({test['largest_document_bytes']:,} of "
              f"{test['bytes']:,} bytes), so eval loss and bits per byte mostly measure that one document. Give a "
              "--validation_file, raise --validation_split_percentage, or remove that document.", flush=True)
    if main_process:
        (output_dir / "data_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def build(model_args, training_args, tok, block_size: int, checkpoint: str | None):
    """The model: random init, or the weights of a checkpoint that already finished.

    Returns (model, parameter counts, its step if the checkpoint already finished)."""
    from zhpretrain import budget
    from zhpretrain import model as modeling
    from zhpretrain import rundir

    config = modeling.build_config(model_args, tok, block_size)
    done = rundir.finished_step(checkpoint, training_args.max_steps) or budget.finished_step(checkpoint)
    model = modeling.build_model(config, training_args.seed, weights=checkpoint if done else None,
                                 init_from=model_args.init_from, tokens=len(tok), pad_token_id=tok.pad_token_id)
    params = modeling.count_parameters(model)
    print(f"model: {config.model_type}, {params['parameters'] / 1e6:.2f}M parameters ({params['embedding_parameters'] / 1e6:.2f}M "
          f"embedding, {params['non_embedding_parameters'] / 1e6:.2f}M other)", flush=True)
    return model, params, done


def batch_shape(training_args, block_size: int, streaming: bool) -> dict:
    world = training_args.world_size
    sequences = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    print(f"global batch: {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
          f"accumulation x {world} processes = {sequences} sequences = {sequences * block_size:,} tokens per step", flush=True)
    return {"world_size": world, "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps, "sequences_per_step": sequences,
            "block_size": block_size, "streaming": streaming}


def hardware_use(model, block_size: int, training_args, peak_tflops: float | None, main_process: bool):
    """(model FLOPs per token, the peak FLOP/s of all devices together, or None): what MFU is measured against."""
    from zhpretrain import speed

    device = training_args.device
    precision = ("bf16" if training_args.bf16 else "fp16" if training_args.fp16 else
                 "tf32" if device.type == "cuda" and training_args.tf32 else "fp32")
    flops = speed.flops_per_token(model, block_size)
    peak, source = speed.peak_flops(device, precision, peak_tflops)
    if main_process:
        print(f"speed: {flops / 1e6:,.1f} MFLOPs per token; peak " +
              (f"{peak / 1e12:,.2f} TFLOPS per device ({source})" if peak else f"unknown ({source}): no MFU logged"), flush=True)
    return flops, peak * training_args.world_size if peak else None


def fit(trainer, stop, checkpoint: str | None, done: int | None, output_dir: Path) -> bool:
    """Train (resuming from checkpoint); False when a signal stopped the run after saving a checkpoint."""
    if done:
        print(f"{checkpoint} is already at the last step: evaluating, saving and sampling it", flush=True)
        trainer.state.global_step = done
        return True
    if checkpoint:
        print(f"resuming from {checkpoint}", flush=True)
    stop.install()
    stop.training = True
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        stop.training = False  # a Ctrl-C during the final save and sample interrupts at once
    if stop.stopped_at is None:
        return True
    if trainer.is_world_process_zero():
        print(f"stopped at step {stop.stopped_at}; checkpoint saved to {output_dir / f'checkpoint-{stop.stopped_at}'}. "
              "Run the same command to continue.", flush=True)
    return False


def save_and_sample(trainer, output_dir: Path, run, prompt: str, max_new_tokens: int) -> None:
    """Save final/ (safetensors), then load it back as a user would and continue the prompt."""
    from zhpretrain import console, rundir, train

    step = trainer.state.global_step
    metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h and h["step"] == step), None) \
        or trainer.evaluate()
    final = output_dir / "final"
    if trainer.is_fsdp_enabled:  # checkpoints are each rank's shards (no gather); final/ is gathered once, for from_pretrained
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(str(final))
    except Exception as e:  # see rundir.save_error: torch reports a full disk as a RuntimeError
        raise rundir.save_error(final, e) from None
    if trainer.is_world_process_zero():
        train.tidy_final(final)
        console.write(f"final: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}, "
                      f"bits per byte {metrics['eval_bits_per_byte']:.4f}; model saved to {final}")
        from transformers import pipeline

        generator = pipeline("text-generation", model=str(final), device=trainer.args.device)
        sample = train.generate(generator.model, generator.tokenizer, prompt, max_new_tokens)
        run.log_samples(step, [sample], label="sample", key="final_sample")


def publish(final: Path, hub_model_id: str | None, hub_token: str | None, modelscope_id: str | None) -> int:
    """Upload final/ (already saved, with its card) to the hubs asked for; 3 when an upload failed, the model being safe."""
    from zhpretrain import hub

    targets = [(f"hf:{hub_model_id}", hub_token)] if hub_model_id else []
    targets += [(f"modelscope:{modelscope_id}", None)] if modelscope_id else []
    code = 0
    for target, token in targets:
        try:
            print(f"published {final} to {hub.publish(final, target, token)}", flush=True)
        except UserError as e:
            report(e)
            code = 3
    return code


def main(argv=None, stop=None) -> int:
    from zhpretrain import config, hub, launch, train

    stop = stop or train.GracefulStop()
    argv = list(sys.argv[1:] if argv is None else argv)
    preset, data_args, model_args, run_args, training_args = config.parse_args(argv)
    if cmd := launch.command(run_args.nproc_per_node, argv):
        launch.relaunch(cmd)  # does not return: this process becomes torchrun, which starts one process per GPU
    print(f"preset: {preset}", flush=True)
    # The Trainer's own push_to_hub would create the repo before training and push output_dir (checkpoints) at every
    # save; we publish final/ with its card once it is saved instead.
    hub_model_id = (training_args.hub_model_id or Path(training_args.output_dir).name) if training_args.push_to_hub else None
    hub_token = training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None  # the Trainer pickles its arguments into every save
    given = hub.fetch(data_args, model_args)
    output_dir, lock = setup(training_args, data_args, run_args)
    try:
        code = run(data_args, model_args, run_args, training_args, preset, output_dir, stop, given)
    finally:
        lock.release()
    if code or training_args.process_index != 0:
        return code
    return publish(output_dir / "final", hub_model_id, hub_token, run_args.push_to_modelscope)


def run(data_args, model_args, run_args, training_args, preset, output_dir: Path, stop, given: dict) -> int:
    from zhpretrain import blocks, budget, card, console, rundir, stream, tracking, train

    main_process = training_args.process_index == 0
    checkpoint, source, run_identity = resume_point(output_dir, data_args, model_args, run_args, training_args, main_process)
    time_budget = budget.TimeBudget(run_args, checkpoint)  # before tokenizing: a changed budget is refused at once
    tok, datasets, meta = prepare_data(data_args, model_args, source, builder=training_args.local_process_index == 0,
                                       rank=training_args.process_index, world=training_args.world_size, resumed=checkpoint)
    record_identity(output_dir, checkpoint, run_identity, tok, main_process)
    stats = describe_data(meta, output_dir, main_process)
    model, params, done = build(model_args, training_args, tok, data_args.block_size, checkpoint)
    shape = train.RunShape(batch_shape(training_args, data_args.block_size, data_args.streaming))
    if checkpoint:
        shape.check(checkpoint)
    if main_process and (problem := rundir.space_problem(output_dir, 2 * rundir.checkpoint_bytes(params["parameters"]),
                                                          "a checkpoint and final/")):
        print(f"warning: {problem}; saving will stop the run with a clear message when space runs out.", flush=True)
    if data_args.streaming:
        training_args.ignore_data_skip = True  # the stream restores its own position: no replay of skipped batches
        if checkpoint and not done:
            datasets["train"].load_state_dict(stream.load_position(checkpoint, training_args.process_index))

    tokens_per_step = shape.shape["sequences_per_step"] * data_args.block_size
    run = tracking.start(run_args, training_args, main_process=main_process,
                         config={"preset": str(preset), "data": vars(data_args), "model": vars(model_args), "run": vars(run_args),
                                 "training": training_args.to_dict(), "model_config": model.config.to_dict(),
                                 "data_stats": stats, **params, **shape.shape}, checkpoint=checkpoint)
    samples = train.SampleCallback(tok, run_args.sample_prompts, run_args.max_new_tokens, run.log_samples,
                                   enabled=not train.sharded(training_args))
    guard = train.Guard(stop, params["parameters"])
    callbacks = [stop, guard, shape, samples, train.Manifest()] + ([run.callback] if run.callback else [])
    if data_args.streaming:
        callbacks.append(train.StreamPosition(datasets["train"], training_args.process_index))
    bytes_per_token = blocks.label_bytes_per_token(datasets["test"], tok)  # exactly the tokens evaluated
    flops, peak = hardware_use(model, data_args.block_size, training_args, run_args.peak_tflops, main_process)
    trainer = train.build_trainer(model, training_args, datasets, tok, callbacks, bytes_per_token, tokens_per_step,
                                  flops_per_token=flops, peak_flops=peak,
                                  muon_learning_rate=run_args.muon_learning_rate, document_attention=data_args.document_attention)
    guard.trainer = trainer
    time_budget.attach(trainer)  # after the other callbacks (Guard may add a save), before console's progress bar
    console.attach(trainer, output_dir, main_process)
    try:
        if not fit(trainer, stop, checkpoint, done, output_dir):
            return 130
        save_and_sample(trainer, output_dir, run, run_args.prompt, run_args.max_new_tokens)
        if main_process:
            card.write(output_dir / "final", trainer.state, data_args, model_args, params, stats, tokens_per_step, len(tok), given)
        time_budget.report(run)
    finally:
        run.finish()
    return 0


if __name__ == "__main__":
    if os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # one console: rank 0 speaks for the launch; every rank's errors still show (stderr)
    if not {"-h", "--help", "--help-all"} & set(sys.argv[1:]):
        print("zhpretrain: loading libraries ...", flush=True)  # at once: importing torch and transformers takes seconds
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, no source line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Writing model shards" bars under our progress bar
    from zhpretrain.train import GracefulStop

    handler = GracefulStop()
    handler.install()  # from the start: a Ctrl-C at any moment gets a clean exit, a second one an immediate one
    try:
        sys.exit(main(stop=handler))
    except UserError as e:
        sys.exit(report(e))
    except KeyboardInterrupt:  # before training started: caches are written atomically, nothing half-done is kept
        print("\ninterrupted before training started; nothing was saved. Run the same command to start again.", file=sys.stderr)
        sys.exit(130)
