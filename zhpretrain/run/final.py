"""final/: the model a user loads, saved once training is done (gathered under FSDP), tidied, loaded back as a user
would, and sampled."""
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..model.sampling import sample
from ..report import console
from . import folder

# final/ is written into PARTIAL and renamed into place with its card, so a kill, a crash or a full disk at any moment
# leaves either the whole final/ (weights, tokenizer, card) or none of it; OLD holds the previous one for an instant.
PARTIAL, OLD = ".final.partial", ".final.old"


def save_and_sample(trainer, output_dir: Path, tracker, prompt: str, max_new_tokens: int,
                    card: Callable[[Path], None] | None = None) -> None:
    """Save final/ (safetensors) with its card (card(folder) writes it, on the main process), then load it back as a
    user would and continue the prompt."""
    step = trainer.state.global_step
    metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h and h["step"] == step), None) \
        or trainer.evaluate()
    final, partial, main = output_dir / "final", output_dir / PARTIAL, trainer.is_world_process_zero()
    if main:
        for left in (partial, output_dir / OLD):  # left by a run killed while it wrote final/
            shutil.rmtree(left, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no rank writes its part before the leftovers are gone
    if trainer.is_fsdp_enabled:  # checkpoints are each rank's shards (no gather); final/ is gathered once, for from_pretrained
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(str(partial))
        if main:
            tidy(partial)
            if card is not None:
                card(partial)
            _replace(partial, final)
    except Exception as e:  # see folder.save_error: torch reports a full disk as a RuntimeError
        raise folder.save_error(final, e) from None
    if main:
        console.write(f"final: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f}, "
                      f"bits per byte {metrics['eval_bits_per_byte']:.4f}; model saved to {final}")
        from transformers import pipeline

        generator = pipeline("text-generation", model=str(final), device=trainer.args.device)
        text = sample(generator.model, generator.tokenizer, prompt, max_new_tokens)
        tracker.log_samples(step, [text], label="sample", key="final_sample")


def _replace(new: Path, final: Path) -> None:
    """Put the folder `new` at `final` by renames only (a folder cannot be renamed over a non-empty one)."""
    old = final.parent / OLD
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


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
