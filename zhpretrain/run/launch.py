"""One process per GPU: a plain `python pretrain.py` on a machine with several GPUs re-executes itself under torch's
elastic launcher (torchrun), so every launch trains with DistributedDataParallel, never DataParallel."""
import os
import sys

import torch

from ..errors import UserError

# How long the launcher lets the processes finish after Ctrl-C before it kills them: they save a checkpoint first,
# and torchrun's own 30 s is too short for a large model on a slow disk. Older torchruns have no such flag (pytorch
# PR #172596 added it in 2026) and refuse any they do not know, so it is passed only where the parser has it.
SHUTDOWN_TIMEOUT = 900


def launched() -> bool:
    """Started by torchrun, accelerate launch, deepspeed or a cluster launcher (they all set these)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def processes(nproc_per_node: str) -> int:
    """How many processes this node runs: every visible GPU for `auto`, else the number given (a CPU-only machine can
    run several with gloo: that is how the multi-process path is tested without a GPU)."""
    if nproc_per_node == "auto":
        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    try:
        n = int(nproc_per_node)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"nproc_per_node must be auto or a whole number of processes (1 or more), not '{nproc_per_node}'.")
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise UserError(f"nproc_per_node {n} asks for more processes than the {torch.cuda.device_count()} GPUs visible "
                        "(CUDA_VISIBLE_DEVICES). Give at most that many, or auto.")
    return n


def command(nproc_per_node: str, argv: list[str]) -> list[str] | None:
    """The torchrun command that runs this script on every GPU of this node; None when this process should train itself.

    One GPU (or a CPU) and one process need no launcher. With more GPUs even one process goes through the launcher:
    started by it, the Trainer uses exactly one GPU, where alone it would fall back to DataParallel over all of them."""
    if launched():
        return None
    n = processes(nproc_per_node)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 1 and gpus <= 1:
        return None
    shutdown = [f"--shutdown_timeout={SHUTDOWN_TIMEOUT}"] if _has_option("--shutdown_timeout") else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *shutdown,
            sys.argv[0], *argv]


def _has_option(flag: str) -> bool:
    """Whether this torch's torchrun accepts the flag (read from its own parser, not guessed from its version)."""
    from torch.distributed.run import get_args_parser

    return any(flag in action.option_strings for action in get_args_parser()._actions)


def relaunch(cmd: list[str]) -> None:
    """Replace this process by the launcher (signals from the terminal then reach it and, through it, every rank)."""
    n = int(cmd[4].split("=")[1])
    # torchrun sets 1 thread per process and warns about it; share the cores instead, unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    print(f"starting {n} processes, one per {'GPU' if torch.cuda.is_available() else 'CPU share'}: {' '.join(cmd[1:5])}",
          flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def sharded(args) -> bool:
    """FSDP or DeepSpeed, from the arguments or from an accelerate config: weights are split, so no rank-0-only generate."""
    env = any(os.environ.get(v, "false").lower() == "true" for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return bool(args.fsdp or args.deepspeed or env)
