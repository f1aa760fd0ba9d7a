"""Launched by test_distributed under torchrun: write the blocks each rank's training dataloader yields in its first steps."""
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pretrain  # noqa: E402
from zhpretrain import config, train  # noqa: E402

out, argv = Path(sys.argv[1]), sys.argv[2:]
_, data_args, model_args, run_args, training_args = config.parse_args(argv)
_, lock = pretrain.setup(training_args, data_args, run_args)
tok, datasets, _ = pretrain.prepare_data(data_args, model_args, pretrain.data_source(data_args),
                                         builder=training_args.local_process_index == 0,
                                         rank=training_args.process_index, world=training_args.world_size)
model, *_ = pretrain.build(model_args, training_args, tok, data_args.block_size, checkpoint=None)
trainer = train.build_trainer(model, training_args, datasets, tok, [], bytes_per_token=1.0, tokens_per_step=1)
blocks = [hashlib.md5(ids.numpy().tobytes()).hexdigest()
          for _, batch in zip(range(6), trainer.get_train_dataloader()) for ids in batch["input_ids"]]
(out / f"rank{training_args.process_index}.json").write_text(json.dumps(blocks))
lock.release()
