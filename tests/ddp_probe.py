"""Launched by test_distributed under torchrun: write the blocks each rank's training dataloader yields in its first steps."""
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zhpretrain import config  # noqa: E402
from zhpretrain.data import prepare  # noqa: E402
from zhpretrain.model import attention, build  # noqa: E402
from zhpretrain.run import folder, resume  # noqa: E402
from zhpretrain.train.trainer import PretrainTrainer  # noqa: E402

out, argv = Path(sys.argv[1]), sys.argv[2:]
_, data_args, model_args, run_args, training_args = config.parse_args(argv)
_, lock = folder.setup(training_args, data_args, run_args)
start = resume.Resume(None, {})
tok, datasets, _ = prepare.prepare(data_args, model_args, prepare.source(data_args), start,
                                   builder=training_args.local_process_index == 0,
                                   rank=training_args.process_index, world=training_args.world_size)
model, _ = build.build(model_args, training_args, tok, data_args.block_size, start)
trainer = PretrainTrainer(model=model, args=training_args, train_dataset=datasets["train"], eval_dataset=datasets["test"],
                          processing_class=tok, data_collator=attention.collator(tok.eos_token_id, data_args.document_attention),
                          bytes_per_token=1.0, tokens_per_step=1)
blocks = [hashlib.md5(ids.numpy().tobytes()).hexdigest()
          for _, batch in zip(range(6), trainer.get_train_dataloader()) for ids in batch["input_ids"]]
(out / f"rank{training_args.process_index}.json").write_text(json.dumps(blocks))
lock.release()
