"""PyTorch DDP training on CPU (gloo) with NO provenance code: run it through the prov4ml-hpc launcher.

    mpiexec -n 4 python -m prov4ml_hpc.run examples/ddp_plain.py --epochs 2
    srun -n 4 python -m prov4ml_hpc.run examples/ddp_plain.py
    torchrun --nproc-per-node 2 -m prov4ml_hpc.run examples/ddp_plain.py
    python examples/ddp_plain.py                      # one process, no launcher

The data set (Gaussian blobs, 4 classes) is generated from a seed, identically on every rank: nothing is
downloaded.  Ranks come from torchrun (RANK/WORLD_SIZE), Open MPI (OMPI_COMM_WORLD_*), MPICH/Hydra or PMI
(PMI_RANK/PMI_SIZE) or an `srun` step (SLURM_PROCID/SLURM_NTASKS).  The rendezvous address is MASTER_ADDR
(default: the first node of the SLURM allocation, else 127.0.0.1) and MASTER_PORT (default 29500 + the SLURM
job id modulo 1000, else 29500): set MASTER_PORT when several jobs share a node.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def launcher_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from whichever launcher started this process."""
    env = os.environ
    for rank_var, size_var, local_var in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH / Intel MPI / srun --mpi=pmi2
        ("PMIX_RANK", "PMIX_SIZE", "SLURM_LOCALID"),  # srun --mpi=pmix
    ):
        if env.get(rank_var) and env.get(size_var):
            return int(env[rank_var]), int(env[size_var]), int(env.get(local_var) or 0)
    if env.get("SLURM_STEP_ID") is not None and env.get("SLURM_PROCID"):  # inside an srun step
        size = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
        return int(env["SLURM_PROCID"]), int(size), int(env.get("SLURM_LOCALID") or 0)
    return 0, 1, 0


def master_address() -> str:
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    scontrol = shutil.which("scontrol")
    if nodelist and scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            if out.stdout.split():
                return out.stdout.split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "127.0.0.1"


def init_distributed() -> tuple[int, int, int]:
    """Initialise the default process group (gloo) for any launcher; returns (rank, world_size, local_rank)."""
    rank, world, local = launcher_ranks()
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun already set MASTER_ADDR/PORT (its own store)
        os.environ.setdefault("MASTER_ADDR", master_address())
        job = os.environ.get("SLURM_JOB_ID", "")
        os.environ.setdefault("MASTER_PORT", str(29500 + (int(job) % 1000 if job.isdigit() else 0)))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world, local


def make_blobs(n: int, features: int = 8, classes: int = 4, seed: int = 0) -> TensorDataset:
    """A reproducible classification data set: `classes` Gaussian blobs in `features` dimensions."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return TensorDataset(x, y)


class MLP(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=1024, help="training samples (validation: a quarter)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-dir", default="checkpoints", help="where rank 0 writes a checkpoint per epoch"
    )
    return p.parse_args(argv)


def all_mean(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    model.train()
    return all_mean(loss_sum / max(count, 1)), all_mean(correct / max(count, 1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    torch.manual_seed(args.seed)
    train = make_blobs(args.samples, seed=args.seed)
    val = make_blobs(args.samples // 4, seed=args.seed + 1)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    val_loader = DataLoader(val, batch_size=256, sampler=DistributedSampler(val, world, rank, shuffle=False))
    model = nn.parallel.DistributedDataParallel(MLP())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        t0 = time.time()
        for x, y in loader:
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            step += 1
        val_loss, val_acc = evaluate(model, val_loader)
        if rank == 0:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
            path = os.path.join(args.checkpoint_dir, f"epoch-{epoch}.pt")
            torch.save({"epoch": epoch, "model": model.module.state_dict()}, path)
            print(
                f"epoch {epoch}: loss {loss.item():.4f} val_loss {val_loss:.4f} val_acc {val_acc:.3f} "
                f"({time.time() - t0:.1f} s, {world} ranks)",
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
