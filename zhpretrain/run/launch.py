"""One process per GPU: a plain `python pretrain.py` on a machine with several GPUs re-executes itself under torch's
elastic launcher (torchrun), so every launch trains with DistributedDataParallel, never DataParallel. Under SLURM's
`srun --ntasks-per-node=8 python pretrain.py` the tasks srun started are the processes: their SLURM ranks are handed to
torch under the names torchrun gives (adopt_slurm), and nothing is re-executed.

torch is imported inside the functions: pretrain.py calls adopt_slurm before it knows which rank speaks on the console,
before the libraries are loaded."""
import os
import re
import sys

from ..errors import UserError

# How long the launcher lets the processes finish after Ctrl-C before it kills them: they save a checkpoint first,
# and torchrun's own 30 s is too short for a large model on a slow disk. Older torchruns have no such flag (pytorch
# PR #172596 added it in 2026) and refuse any they do not know, so it is passed only where the parser has it.
SHUTDOWN_TIMEOUT = 900


def launched() -> bool:
    """Started by torchrun, accelerate launch, deepspeed or a cluster launcher (they all set these)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def slurm_tasks() -> int:
    """How many tasks srun started for this job step (1 outside srun). SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: the
    latter is the allocation's, also set inside an sbatch script, where one `python pretrain.py` runs (and relaunches)."""
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) if "SLURM_PROCID" in os.environ else 1
    except ValueError:
        return 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: node[07-09,12],gpu3 -> node07 (each bracket gives its first value)."""
    head = re.match(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*", nodelist.strip()).group(0)
    return re.sub(r"\[([^\]\-,]*)[^\]]*\]", r"\1", head)


def _tasks_on_node(tasks_per_node: str, node: int) -> int:
    """This node's task count from SLURM's per-node list: 8(x2),4 is 8, 8, 4."""
    counts = []
    for item in tasks_per_node.split(","):
        n, _, times = item.partition("(x")
        counts += [int(n)] * int(times.rstrip(")") or 1)
    return counts[node]


def adopt_slurm() -> bool:
    """When srun started several tasks of this step, name each one's place the way torchrun does (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT): accelerate 1.15 reads none of SLURM's
    variables (only MPI's, and those only on a CPU). Values the user set stay. Returns whether it did.

    The store that joins the processes listens on rank 0, which srun places on the step's first node: its name is
    MASTER_ADDR. The port comes from the job id, so every task of the job computes the same one."""
    if launched() or slurm_tasks() <= 1:
        return False
    env = os.environ
    node = int(env.get("SLURM_NODEID", "0"))
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    try:
        local_world = _tasks_on_node(per_node, node) if per_node else slurm_tasks()
    except (ValueError, IndexError):
        local_world = slurm_tasks()
    for name, value in (("RANK", env["SLURM_PROCID"]), ("WORLD_SIZE", slurm_tasks()),
                        ("LOCAL_RANK", env.get("SLURM_LOCALID", "0")), ("LOCAL_WORLD_SIZE", local_world),
                        ("GROUP_RANK", node), ("MASTER_ADDR", first_host(nodes)),
                        ("MASTER_PORT", 15000 + int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "")) or 0) % 20000)):
        env.setdefault(name, str(value))
    return True


def processes(nproc_per_node: str) -> int:
    """How many processes this node runs: every visible GPU for `auto`, else the number given (a CPU-only machine can
    run several with gloo: that is how the multi-process path is tested without a GPU)."""
    import torch

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
    started by it, the Trainer uses exactly one GPU, where alone it would fall back to DataParallel over all of them.
    Under srun with several tasks each task is one of the processes (adopt_slurm) and trains on one GPU."""
    import torch

    if adopt_slurm() or launched():
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
    import torch

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
