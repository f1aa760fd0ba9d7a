"""final/: the model a user loads, saved once training is done (gathered under FSDP), tidied, loaded back as a user
would, and sampled."""
import os
from pathlib import Path

from ..model.sampling import sample
from ..report import console
from . import folder


def save_and_sample(trainer, output_dir: Path, tracker, prompt: str, max_new_tokens: int) -> None:
    """Save final/ (safetensors), then load it back as a user would and continue the prompt."""
    step = trainer.state.global_step
    metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h and h["step"] == step), None) \
        or trainer.evaluate()
    final = output_dir / "final"
    if trainer.is_fsdp_enabled:  # checkpoints are each rank's shards (no gather); final/ is gathered once, for from_pretrained
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(str(final))
    except Exception as e:  # see folder.save_error: torch reports a full disk as a RuntimeError
        raise folder.save_error(final, e) from None
    if trainer.is_world_process_zero():
        tidy(final)
        console.write(f"final: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}, "
                      f"bits per byte {metrics['eval_bits_per_byte']:.4f}; model saved to {final}")
        from transformers import pipeline

        generator = pipeline("text-generation", model=str(final), device=trainer.args.device)
        text = sample(generator.model, generator.tokenizer, prompt, max_new_tokens)
        tracker.log_samples(step, [text], label="sample", key="final_sample")


def tidy(final: Path) -> None:
    """final/ holds what a user loads: drop the Trainer's pickled training_args.bin (loading it means unpickling, and
    the arguments are in the SwanLab config anyway), and give files the permissions of any file the user creates
    (safetensors writes its file 0600)."""
    (final / "training_args.bin").unlink(missing_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for path in final.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
