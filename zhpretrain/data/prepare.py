"""From the data options to what the Trainer reads: what the data is (its key), then documents -> train | test ->
tokenizer -> token blocks (cached on disk, or streamed), and what they hold."""
import json
from pathlib import Path

import torch

from ..errors import UserError
from . import blocks, cache, files, split, stream, tokenizer
from .readers import ReadStats

DOMINANT_SHARE = 0.5  # one evaluation document above this share of the evaluation text is reported


def source(data_args) -> dict:
    """What the data is: files (with content fingerprints) or a hub id, and how it is split. Keys the caches and the run."""
    if data_args.dataset_name:
        found = {"dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name}
    else:
        paths, skipped = files.data_files(data_args.train_file)
        if skipped:
            print(f"train_file: skipped {len(skipped)} files that are not data: {', '.join(skipped[:8])}"
                  f"{' ...' if len(skipped) > 8 else ''}", flush=True)
        found = {"files": files.fingerprint(paths)}
    if data_args.validation_file:
        found["validation"] = files.fingerprint(files.find_files(data_args.validation_file, "validation_file"))
    found.update(text_column=data_args.text_column, skip_bad_records=data_args.skip_bad_records, split_seed=data_args.split_seed,
                 validation_split_percentage=data_args.validation_split_percentage,
                 validation_split_documents=data_args.validation_split_documents)
    return found


def check_eval_split(test: dict, block_size: int) -> None:
    if test["blocks"] == 0:
        raise UserError(f"The evaluation split has {test['tokens']:,} tokens in {test['documents']:,} documents, fewer than "
                        f"one block of {block_size}. Raise --validation_split_percentage, give a --validation_file, "
                        "or lower --block_size.")


def prepare(data_args, model_args, key: dict, resume, builder: bool, rank: int = 0, world: int = 1):
    """Return (tokenizer, {"train", "test"} datasets, meta with the splits' stats). `builder` (one process per machine)
    writes the caches; the others wait for them."""
    tok, how = tokenizer.choose(data_args, model_args, key, resume.tokenizer, builder)
    print(f"tokenizer: {len(tok):,} tokens ({how})", flush=True)

    if data_args.streaming:
        test, test_stats = stream.eval_blocks(data_args, tok, data_args.max_eval_samples or 256)
        check_eval_split(test_stats, data_args.block_size)
        train = stream.StreamingBlocks(data_args, tok, rank, world)
        if resume.checkpoint and not resume.done:
            train.load_state_dict(resume.stream_position(rank))
        return tok, {"train": train, "test": test}, {"stats": {"train": {"streaming": True}, "test": test_stats}}

    folder = blocks.cache_folder(data_args.cache_root(), {**key, "tokenizer": blocks.tokenizer_digest(tok),
                                                          "block_size": data_args.block_size})
    stats = ReadStats()
    cache.once(folder, lambda tmp: blocks.write(tmp, split.documents(data_args, stats), tok, data_args.block_size, stats.bytes),
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


def describe(meta: dict, output_dir: Path, main_process: bool) -> dict:
    """Print what the splits hold (and warn when one document dominates the evaluation); write data_stats.json."""
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
