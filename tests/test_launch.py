"""Launches that are not the self-relaunch, and what the ranks of one launch share: tasks srun started (one world, no
torchrun inside them), the cache verdict of each machine's builder (heard only on that machine, and taken by the
waiters instead of hashing the cache again), and a budget that refuses a warmup given as a share of the steps."""
import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import DEMO, REPO, failure
from zhpretrain.run import launch

TINY = ["--train_file", DEMO, "--block_size", 32, "--tokenizer_vocab_size", 300, "--eval_on_start", "false",
        "--logging_steps", 1, "--swanlab_mode", "disabled", "--max_new_tokens", 4, "--bf16", "false",
        "--config_overrides", "hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=2,num_key_value_heads=1"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCH_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID")


def clean_env(**extra) -> dict:
    """This environment without any launcher's or SLURM's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in TORCH_NAMES}
    return {**env, **ONE_THREAD, **{k: str(v) for k, v in extra.items()}}


def srun_env(procid: int, job: int, tasks: int = 2) -> dict:
    """What `srun --nodes=1 --ntasks-per-node=2` gives each task (from srun(1)'s OUTPUT ENVIRONMENT VARIABLES)."""
    return {"SLURM_JOB_ID": job, "SLURM_STEP_ID": 0, "SLURM_PROCID": procid, "SLURM_LOCALID": procid, "SLURM_NODEID": 0,
            "SLURM_NTASKS": tasks, "SLURM_STEP_NUM_TASKS": tasks, "SLURM_NTASKS_PER_NODE": tasks,
            "SLURM_TASKS_PER_NODE": tasks, "SLURM_STEP_TASKS_PER_NODE": tasks, "SLURM_NNODES": 1,
            "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost"}


# ---- SLURM

@pytest.fixture(autouse=True)
def restore_environ():
    """launch.adopt_slurm writes RANK, WORLD_SIZE, MASTER_PORT... into os.environ, which monkeypatch does not undo for
    names that were absent: left behind, they make every later run of the suite join a process group."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("nodelist, first", [("localhost", "localhost"), ("node[07-09,12],gpu3", "node07"),
                                             ("gpu3,node[1-2]", "gpu3"), ("rack[2-3]-n[010-011]", "rack2-n010")])
def test_the_first_host_of_a_slurm_node_list(nodelist, first):
    assert launch.first_host(nodelist) == first


def test_srun_tasks_get_torch_names_and_no_relaunch(monkeypatch):
    for k in TORCH_NAMES:
        monkeypatch.delenv(k, raising=False)
    ports = set()
    for procid in (0, 1):
        for k, v in {**srun_env(procid, 4242), "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NNODES": 2,
                     "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_NODEID": procid}.items():
            monkeypatch.setenv(k, str(v))
        for k in TORCH_NAMES:
            monkeypatch.delenv(k, raising=False)
        assert launch.command("2", ["--max_steps", "1"]) is None  # nothing re-executed: this task is a process
        assert [os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR")] \
            == [str(procid), "2", str(procid), "2", str(procid), "gpu07"]
        ports.add(os.environ["MASTER_PORT"])
    assert len(ports) == 1  # every task of the job computes the same port


def test_one_srun_task_or_an_sbatch_script_still_relaunches_on_every_process(monkeypatch):
    for k in TORCH_NAMES:
        monkeypatch.delenv(k, raising=False)
    # `srun python pretrain.py` (one task) and a batch script running python itself: SLURM_NTASKS=8 is the allocation's
    # there, and SLURM_PROCID=0 is set too, but only srun's own step variables say how many tasks were started.
    for env in ({**srun_env(0, 7, tasks=1)}, {"SLURM_JOB_ID": 7, "SLURM_NTASKS": 8, "SLURM_PROCID": 0, "SLURM_LOCALID": 0}):
        for k in [k for k in os.environ if k.startswith("SLURM_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        cmd = launch.command("2", ["--max_steps", "1"])
        assert cmd is not None and "torch.distributed.run" in cmd and "--nproc_per_node=2" in cmd
        assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ


# pretrain.py as a SLURM task runs it, recording what this process saw: the process group and every digest it took.
RECORDING = """
import atexit, json, os, runpy, sys
sys.path.insert(0, {repo!r})
from zhpretrain.data import cache
digests, digest = [], cache.file_digest
def counted(path):
    digests.append(str(path))
    return digest(path)
cache.file_digest = counted
def record():
    import torch.distributed as dist
    world = [dist.get_rank(), dist.get_world_size()] if dist.is_initialized() else None
    with open(os.path.join({out!r}, "task-" + os.environ["SLURM_PROCID"] + ".json"), "w") as f:
        json.dump({{"world": world, "digests": digests}}, f)
atexit.register(record)
sys.argv = [{pretrain!r}, *sys.argv[1:]]
runpy.run_path({pretrain!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def srun_launch(tmp_path_factory):
    """Two tasks started as `srun --ntasks-per-node=2 python pretrain.py` starts them (no srun here: its environment)."""
    tmp = tmp_path_factory.mktemp("srun")
    script = tmp / "task.py"
    script.write_text(RECORDING.format(repo=str(REPO), out=str(tmp), pretrain=str(REPO / "pretrain.py")))
    args = [*TINY, "--max_steps", 4, "--save_steps", 4, "--eval_steps", 4, "--per_device_train_batch_size", 4,
            "--nproc_per_node", 2, "--output_dir", tmp / "out", "--cache_dir", tmp / "cache"]
    job = random.randrange(1, 20000)
    tasks = [subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=tmp, env=clean_env(**srun_env(r, job)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [t.communicate(timeout=600)[0] for t in tasks]
    for t, out in zip(tasks, outs):
        assert t.returncode == 0, failure(out)
    return tmp, outs


@pytest.mark.slow
def test_srun_tasks_train_as_one_world_without_torchrun(srun_launch):
    tmp, (out0, out1) = srun_launch
    assert "starting 2 processes" not in out0 + out1  # no torchrun inside the tasks
    assert "4 per device x 1 accumulation x 2 processes = 8 sequences" in out0
    assert "global batch:" not in out1  # one console: task 1 is rank 1, silent on stdout
    worlds = [json.loads((tmp / f"task-{r}.json").read_text())["world"] for r in (0, 1)]
    assert worlds == [[0, 2], [1, 2]]
    state = json.loads((tmp / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (tmp / "out" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_only_the_builder_hashes_the_caches(srun_launch):
    tmp, _ = srun_launch
    cache = str(tmp / "cache")
    hashed = [[p for p in json.loads((tmp / f"task-{r}.json").read_text())["digests"] if p.startswith(cache)] for r in (0, 1)]
    # Rank 0 wrote the tokenizer cache (2 files) and the token cache (3), each file hashed once, for its manifest;
    # rank 1 took rank 0's verdict instead of hashing them again (a later start: rank 0 alone verifies them).
    names = sorted(os.path.basename(p) for p in hashed[0])
    assert names == ["meta.json", "test.bin", "tokenizer.json", "tokenizer_config.json", "train.bin"], hashed[0]
    assert hashed[1] == []


# ---- the cache verdict, per machine

NODE = """
import os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from zhpretrain.data import cache
from zhpretrain.errors import UserError
role, go = os.environ["ROLE"], Path({go!r})
while not go.exists():  # every process has started (pretrain.py: the process group's rendezvous)
    time.sleep(0.05)
def fill(tmp):
    if role == "fail":
        raise UserError("node " + os.environ["GROUP_RANK"] + ": the disk is full")
    time.sleep(4)
    (tmp / "train.bin").write_bytes(b"tokens")
try:
    cache.once(Path({folder!r}), fill, builder=role != "wait", what="token cache")
except UserError as e:
    print("stopped:", e)
    sys.exit(3)
print("ready")
"""


def test_a_nodes_build_failure_stops_only_that_nodes_waiters(tmp_path):
    # Two machines share one cache_dir. Node 0's builder fails at once; node 1's builds for 4 s. Node 1's waiter must go
    # on with node 1's cache, node 0's waiter must stop with node 0's error. (GROUP_RANK is torchrun's node rank; the
    # host name is the same here, as it can be for containers on two machines.)
    go, folder = tmp_path / "go", tmp_path / "cache" / "blocks-x"
    script = tmp_path / "node.py"
    script.write_text(NODE.format(repo=str(REPO), go=str(go), folder=str(folder)))
    roles = {"0-build": ("fail", 0), "0-wait": ("wait", 0), "1-build": ("build", 1), "1-wait": ("wait", 1)}
    procs = {name: subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=clean_env(ROLE=role, GROUP_RANK=node, WORLD_SIZE=4, LOCAL_WORLD_SIZE=2))
             for name, (role, node) in roles.items()}
    time.sleep(1.0)
    go.touch()
    outs = {name: p.communicate(timeout=60)[0] for name, p in procs.items()}
    codes = {name: p.returncode for name, p in procs.items()}
    assert codes["1-build"] == 0 and codes["1-wait"] == 0, outs
    assert "ready" in outs["1-wait"] and (folder / "train.bin").read_bytes() == b"tokens"
    assert codes["0-wait"] == 3 and "node 0: the disk is full" in outs["0-wait"], outs


def test_a_verdict_from_before_the_waiter_started_is_not_taken(tmp_path):
    # An earlier launch's builder failed on this machine; this launch's builder then succeeds: the waiter goes on.
    go, folder = tmp_path / "go", tmp_path / "cache" / "blocks-x"
    script = tmp_path / "node.py"
    script.write_text(NODE.format(repo=str(REPO), go=str(go), folder=str(folder)))
    go.touch()
    env = dict(GROUP_RANK=0, WORLD_SIZE=2, LOCAL_WORLD_SIZE=2)
    earlier = subprocess.run([sys.executable, str(script)], env=clean_env(ROLE="fail", **env), capture_output=True, text=True)
    assert earlier.returncode != 0
    waiter = subprocess.Popen([sys.executable, str(script)], env=clean_env(ROLE="wait", **env), stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert waiter.poll() is None  # still waiting: the failure it found is not this launch's
    builder = subprocess.run([sys.executable, str(script)], env=clean_env(ROLE="build", **env), capture_output=True, text=True)
    assert builder.returncode == 0, builder.stdout + builder.stderr
    assert waiter.communicate(timeout=60)[0].strip().endswith("ready") and waiter.returncode == 0


# ---- the budget and a warmup given as a share

@pytest.mark.slow
def test_a_budget_refuses_a_warmup_share_of_the_step_cap(tmp_path):
    # --warmup_steps 0.01 with max_steps 100000 meant 1000 warmup steps, whatever the 6 s budget allows.
    proc = subprocess.run([sys.executable, str(REPO / "pretrain.py"), *map(str, [
        *TINY, "--max_train_minutes", 0.1, "--max_steps", 100000, "--warmup_steps", 0.01, "--save_steps", 100000,
        "--eval_steps", 100000, "--per_device_train_batch_size", 4, "--output_dir", tmp_path / "out",
        "--cache_dir", tmp_path / "cache"])], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:]
    error = proc.stdout[proc.stdout.index("error: "):]
    assert "--warmup_steps 0.01 is a share of the steps" in error and "--max_train_minutes" in error
    assert "1,000 warmup steps" in error and "Traceback" not in proc.stdout
    assert not list((tmp_path / "out").glob("checkpoint-*"))
