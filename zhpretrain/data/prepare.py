"""From the data options to what the Trainer reads: what the data is (its key), then documents -> train | test ->
tokenizer -> token blocks (cached on disk, or streamed), and what they hold."""
import json
from pathlib import Path

import torch

from ..errors import UserError
from . import blocks, cache, files, split, stream, tokenizer
from .readers import ReadStats

DOMINANT_SHARE = 0.5  # one evaluation document above this share of the evaluation text is reported
DIGESTS = "data-digests.json"  # in the cache folder: each data file's whole-content digest, by path, size, mtime, ctime, inode


def source(data_args) -> dict:
    """What the data is: files (with content fingerprints) or a hub id, and how it is split. Keys the caches and the run."""
    if data_args.dataset_name:
        found = {"dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name}
    else:
        paths, skipped = files.train_files(data_args, say=True)
        if skipped:
            print(f"train_file: skipped {len(skipped)} files that are not data: {', '.join(skipped[:8])}"
                  f"{' ...' if len(skipped) > 8 else ''}", flush=True)
        found = {"files": files.fingerprint(paths, data_args.cache_root() / DIGESTS)}
    if data_args.validation_file:
        found["validation"] = files.fingerprint(files.validation_files(data_args), data_args.cache_root() / DIGESTS)
    found.update(text_column=data_args.text_column, skip_bad_records=data_args.skip_bad_records, split_seed=data_args.split_seed,
                 validation_split_percentage=data_args.validation_split_percentage,
                 validation_split_documents=data_args.validation_split_documents, split_rule=split.RULE)
    return found


# The start-up estimate's constants, per byte of data file (what is known before reading), with the default tokenizer
# settings (a 32,000-token BPE, block_size 512), measured on 2026-12-01 at commit 2b6a142 on one core of a 2-core AMD EPYC
# (the 112 MB run at 0a82d8b, the same data code; pinned: taskset -c 1, OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1), README "从 demo 到完整语料":
#   python tests/benchmarks/prepare_constants.py grow ../shared/data/zhwiki-sample.jsonl 0.5|1|2 /tmp/corpus-<s>x.jsonl
#   /usr/bin/time -v python tests/benchmarks/prepare_constants.py measure /tmp/corpus-<s>x.jsonl
# gave 58.3, 84.1 and 141.7 s of CPU for 28,090,961, 56,179,426 and 112,364,995 bytes: a least-squares line of 0.99 s per
# MB (1.0 MB/s: hashing, reading, splitting, tokenizing, packing, writing) plus 29.5 s (imports, the tokenizer's
# training, done before this estimate is printed); 112,364,995 bytes gave 48,119,204 bytes of cache (0.428). The core was shared with other jobs (load 4-10), so the CPU time is the figure; more cores speed up only the
# Rust tokenizer's share of it.
CACHE_FILE_BYTES_PER_S = 1_000_000
CACHE_BYTES_PER_FILE_BYTE = 0.427  # uint16 tokens; twice that with a vocabulary above 65,536 (uint32)


def estimate(key: dict, vocabulary: int) -> str | None:
    """One line: about how long building the token cache takes and how much disk it needs, from the data files' size
    and the constants above (none for a hub dataset, whose size is not known before it is read)."""
    entries = key.get("files", []) + key.get("validation", [])
    if not entries:
        return None
    size = sum(e["size"] for e in entries)
    compressed = any(e["path"].lower().endswith(files.COMPRESSED) for e in entries)
    seconds = size / CACHE_FILE_BYTES_PER_S
    disk = size * CACHE_BYTES_PER_FILE_BYTE * (2 if vocabulary > 1 << 16 else 1)  # uint32 tokens above 65,536
    more = " (compressed files hold more text than their size: more)" if compressed else ""
    return (f"estimate: building the token cache from {files.human(size)} of data takes about {_duration(seconds)} "
            f"and {files.human(round(disk))} of disk{more}, at the rate measured on one core of a 2-core AMD EPYC "
            f"({CACHE_FILE_BYTES_PER_S / 1e6:.2f} MB of data file per second, {CACHE_BYTES_PER_FILE_BYTE:.2f} bytes of "
            "cache per byte, with the default tokenizer): an estimate, not a measurement of this machine")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_eval_split(test: dict, block_size: int, train_duplicates: int = 0) -> None:
    if test["blocks"] == 0:
        copies = (f" The training split holds {train_duplicates:,} copies of texts it already has: identical texts stay "
                  "on one side of the split, so with few distinct texts little or nothing is held out.") if train_duplicates else ""
        raise UserError(f"The evaluation split has {test['tokens']:,} tokens in {test['documents']:,} documents, fewer than "
                        f"one block of {block_size}. Raise --validation_split_percentage, give a --validation_file, "
                        f"or lower --block_size.{copies}")


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

    def fill(tmp: Path) -> None:
        blocks.write(tmp, split.documents(data_args, stats), tok, data_args.block_size, stats.bytes)
        meta = json.loads((tmp / "meta.json").read_text())  # what only the whole pass knows, kept with the blocks
        for name in blocks.SPLITS:
            meta["stats"][name]["duplicates"] = stats.duplicates[name]
        if stats.in_train is not None:
            meta["stats"]["test"]["in_train"] = stats.in_train
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if builder and blocks.load(folder) is None and (line := estimate(key, len(tok))):
        print(line, flush=True)
    cache.once(folder, fill, builder, "token cache")
    meta = blocks.load(folder)
    if stats.records:
        print(f"read {stats.records:,} records: {stats.empty:,} empty texts dropped, {stats.skipped:,} bad records skipped", flush=True)
    if meta["stats"]["test"].get("in_train"):
        test = meta["stats"]["test"]
        print(f"warning: {test['in_train']:,} of the {test['documents']:,} documents of the validation_file "
              f"{data_args.validation_file} are also in the train_file {data_args.train_file} (the same text), so eval "
              "loss and bits per byte on them measure what the model memorised, not what it learned. Give a "
              "validation_file held out from the training data, or leave validation_file out: the split of the "
              "train_file keeps identical texts on one side.", flush=True)
    datasets = blocks.datasets(folder, meta)
    check_eval_split(meta["stats"]["test"], data_args.block_size, meta["stats"]["train"].get("duplicates", 0))
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
                               f"{s}: {v['documents']:,} documents"
                               f"{f' ({d:,} of them repeat an earlier text)' if (d := v.get('duplicates')) else ''}, "
                               f"{v['tokens']:,} tokens, {v['blocks']:,} blocks "
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
