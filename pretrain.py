"""Pretrain a small GPT-style Chinese language model from scratch.

    python pretrain.py [configs/<preset>.yaml] [--option value ...]

Load the documents, split them, train (or load) a tokenizer, cut the text into token blocks, build a model,
train it with the Hugging Face Trainer (curves to SwanLab), save it, and print a sample continuation.
"""
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from zhpretrain.errors import UserError, report


def once(folder: Path, build, builder: bool) -> None:
    """Build a cache folder on one process per node; the others wait for it to appear.

    Caches are renamed into place only when complete, so the folder's existence is the signal. Waiting on the file
    system instead of a collective barrier means no rank can hit the process-group timeout while a 2 GB corpus is
    tokenized."""
    if folder.exists():
        return
    if builder:
        build()
        return
    print(f"waiting for the main process to write {folder} ...", flush=True)
    while not folder.exists():
        time.sleep(2)


def check_eval_split(test: dict, block_size: int) -> None:
    if test["blocks"] == 0:
        raise UserError(f"The evaluation split has {test['tokens']:,} tokens in {test['documents']:,} documents, fewer than "
                        f"one block of {block_size}. Raise --validation_split_percentage, give a --validation_file, "
                        "or lower --block_size.")


def prepare_data(data_args, model_args, builder: bool, rank: int = 0, world: int = 1):
    """Documents -> train | test -> tokenizer -> token blocks (cached, or streamed): return (tokenizer, datasets, meta)."""
    import torch

    from zhpretrain import blocks, data, tokenizer

    cache = data_args.cache_root()
    source = {"dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name} if data_args.dataset_name \
        else {"files": data.fingerprint(data.find_files(data_args.train_file))}
    if data_args.validation_file:
        source["validation"] = data.fingerprint(data.find_files(data_args.validation_file, "validation_file"))
    source.update(text_column=data_args.text_column, skip_bad_records=data_args.skip_bad_records, split_seed=data_args.split_seed,
                  validation_split_percentage=data_args.validation_split_percentage,
                  validation_split_documents=data_args.validation_split_documents)

    if model_args.tokenizer_name_or_path:
        tok, how = tokenizer.load(model_args.tokenizer_name_or_path, model_args.trust_remote_code), f"loaded {model_args.tokenizer_name_or_path}"
    else:
        folder = tokenizer.cache_folder(cache, source, model_args)
        train_texts = lambda: (t for _, t in data.documents(data_args, data.ReadStats(), "train"))  # noqa: E731
        once(folder, lambda: tokenizer.train_and_save(train_texts(), model_args, folder), builder)
        tok, how = tokenizer.load(str(folder)), f"byte-level BPE from {folder}"
    print(f"tokenizer: {len(tok):,} tokens ({how})", flush=True)

    if data_args.streaming:
        from zhpretrain import stream

        test, test_stats = stream.eval_blocks(data_args, tok, data_args.max_eval_samples or 256)
        check_eval_split(test_stats, data_args.block_size)
        meta = {"stats": {"train": {"streaming": True}, "test": test_stats}}
        return tok, {"train": stream.StreamingBlocks(data_args, tok, rank, world), "test": test}, meta

    folder = blocks.cache_folder(cache, {**source, "tokenizer": blocks.tokenizer_digest(tok), "block_size": data_args.block_size})
    stats = data.ReadStats()
    once(folder, lambda: blocks.build(data.documents(data_args, stats), tok, data_args.block_size, folder, stats.bytes), builder)
    meta = blocks.load(folder)
    if meta is None:
        raise UserError(f"The token cache {folder} is damaged (no readable meta.json). Delete that folder and run again.")
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


def setup(training_args, data_args) -> Path:
    """Check the folders we write, and set up the process group the way the Trainer will use it (gloo on CPU, NCCL on GPUs)."""
    import torch

    output_dir = Path(training_args.output_dir)
    writable(output_dir, "output_dir")
    writable(data_args.cache_root(), "cache_dir")
    training_args.ddp_find_unused_parameters = False
    training_args.dataloader_pin_memory &= torch.cuda.is_available()
    training_args.report_to = [r for r in training_args.report_to if r != "swanlab"]  # we add SwanLab's callback ourselves
    training_args.device  # noqa: B018  (reading it initialises the process group)
    return output_dir


def describe_data(meta: dict, output_dir: Path, main_process: bool) -> dict:
    stats = {s: meta["stats"][s] for s in ("train", "test")}
    print("data: " + "; ".join(f"{s}: streamed from the files" if v.get("streaming") else
                               f"{s}: {v['documents']:,} documents, {v['tokens']:,} tokens, {v['blocks']:,} blocks "
                               f"({v['tokens_in_blocks'] / max(v['tokens'], 1):.2%} of tokens in blocks)"
                               for s, v in stats.items()), flush=True)
    if main_process:
        (output_dir / "data_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def build(model_args, training_args, tok, block_size: int):
    """The model: random init, or the weights of a checkpoint that already finished.

    Returns (model, parameter counts, latest checkpoint, its step if it already finished)."""
    from zhpretrain import model as modeling
    from zhpretrain import train

    config = modeling.build_config(model_args, tok, block_size)
    checkpoint = train.last_checkpoint(training_args.output_dir)
    done = train.finished_step(checkpoint, training_args.max_steps)
    model = modeling.build_model(config, training_args.seed, weights=checkpoint if done else None)
    params = modeling.count_parameters(model)
    print(f"model: {config.model_type}, {params['parameters'] / 1e6:.2f}M parameters ({params['embedding_parameters'] / 1e6:.2f}M "
          f"embedding, {params['non_embedding_parameters'] / 1e6:.2f}M other)", flush=True)
    return model, params, checkpoint, done


def batch_shape(training_args, block_size: int, streaming: bool) -> dict:
    world = training_args.world_size
    sequences = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    print(f"global batch: {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
          f"accumulation x {world} processes = {sequences} sequences = {sequences * block_size:,} tokens per step", flush=True)
    return {"world_size": world, "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps, "sequences_per_step": sequences,
            "block_size": block_size, "streaming": streaming}


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
    from zhpretrain import console, train

    step = trainer.state.global_step
    metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h and h["step"] == step), None) \
        or trainer.evaluate()
    final = output_dir / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        train.tidy_final(final)
        console.write(f"final: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}, "
                      f"bits per byte {metrics['eval_bits_per_byte']:.4f}; model saved to {final}")
        from transformers import pipeline

        generator = pipeline("text-generation", model=str(final), device=trainer.args.device)
        sample = train.generate(generator.model, generator.tokenizer, prompt, max_new_tokens)
        run.log_samples(step, [sample], label="sample", key="final_sample")


def main(argv=None, stop=None) -> int:
    from zhpretrain import config, console, stream, tracking, train
    from zhpretrain import model as modeling

    stop = stop or train.GracefulStop()
    preset, data_args, model_args, run_args, training_args = config.parse_args(argv)
    print(f"preset: {preset}", flush=True)
    modeling.check_positions(model_args, data_args.block_size)  # before hours of tokenizing, not after
    output_dir = setup(training_args, data_args)
    main_process = training_args.process_index == 0

    tok, datasets, meta = prepare_data(data_args, model_args, builder=training_args.local_process_index == 0,
                                       rank=training_args.process_index, world=training_args.world_size)
    stats = describe_data(meta, output_dir, main_process)
    model, params, checkpoint, done = build(model_args, training_args, tok, data_args.block_size)
    shape = train.RunShape(batch_shape(training_args, data_args.block_size, data_args.streaming))
    if checkpoint:
        shape.check(checkpoint)
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
    callbacks = [stop, train.FiniteWeights(), shape, samples] + ([run.callback] if run.callback else [])
    if data_args.streaming:
        callbacks.append(train.StreamPosition(datasets["train"], training_args.process_index))
    bytes_per_token = stats["test"]["bytes"] / max(stats["test"]["tokens"], 1)
    trainer = train.build_trainer(model, training_args, datasets, tok, callbacks, bytes_per_token, tokens_per_step)
    console.attach(trainer, output_dir, main_process)
    try:
        if not fit(trainer, stop, checkpoint, done, output_dir):
            return 130
        save_and_sample(trainer, output_dir, run, run_args.prompt, run_args.max_new_tokens)
    finally:
        run.finish()
    return 0


if __name__ == "__main__":
    if not {"-h", "--help", "--help-all"} & set(sys.argv[1:]):
        print("zhpretrain: loading libraries ...", flush=True)  # at once: importing torch and transformers takes seconds
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
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
