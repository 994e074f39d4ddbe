"""The same DDP training as ddp_plain.py, with explicit prov4ml-hpc calls (everything else is shared).

    mpiexec -n 4 python examples/ddp_explicit.py --run-dir prov4ml_runs
    srun -n 4 python examples/ddp_explicit.py
    torchrun --standalone --nproc-per-node 2 examples/ddp_explicit.py

Every rank records its own rank file: loss and accuracy per step and per epoch (context "training"),
validation per epoch ("validation"), parameters, the data sets, and rank 0's checkpoints with their sha256.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from ddp_plain import MLP, all_mean, evaluate, init_distributed, make_blobs  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

import prov4ml_hpc as p4  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="RUN_ROOT (default PROV4ML_HPC_RUN_DIR or ./prov4ml_runs)")
    p.add_argument("--experiment", default="ddp-blobs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    with p4.start_run(args.experiment, run_dir=args.run_dir) as run:
        p4.log_params(
            {
                **vars(args),
                "world_size": world,
                "backend": "gloo",
                "model": "MLP(8-32-4)",
                "torch": torch.__version__,
            }
        )
        torch.manual_seed(args.seed)
        train = make_blobs(args.samples, seed=args.seed)
        val = make_blobs(args.samples // 4, seed=args.seed + 1)
        p4.log_dataset(
            train,
            name="blobs-train",
            context=p4.TRAINING,
            attrs={"generator": "make_blobs", "seed": args.seed, "features": 8, "classes": 4},
        )
        p4.log_dataset(
            val,
            name="blobs-val",
            context=p4.VALIDATION,
            attrs={"generator": "make_blobs", "seed": args.seed + 1, "features": 8, "classes": 4},
        )
        sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
        val_loader = DataLoader(
            val, batch_size=256, sampler=DistributedSampler(val, world, rank, shuffle=False)
        )
        model = nn.parallel.DistributedDataParallel(MLP())
        p4.log_model(model.module, name="MLP", role="input", context=p4.TRAINING)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        ckpt_dir = os.path.join(run.run_dir, "checkpoints")
        step = 0
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            t0 = time.time()
            loss_sum = correct = count = 0.0
            for x, y in loader:
                opt.zero_grad()
                out = model(x)
                loss = nn.functional.cross_entropy(out, y)
                loss.backward()
                opt.step()
                value, acc = loss.item(), (out.argmax(1) == y).float().mean().item()
                p4.log_metrics({"loss": value, "accuracy": acc}, step=step, context=p4.TRAINING)
                loss_sum, correct, count = loss_sum + value * len(y), correct + acc * len(y), count + len(y)
                step += 1
            p4.log_metrics(
                {
                    "epoch_loss": all_mean(loss_sum / count),
                    "epoch_accuracy": all_mean(correct / count),
                    "epoch_seconds": time.time() - t0,
                },
                step=epoch,
                context=p4.TRAINING,
            )
            val_loss, val_acc = evaluate(model, val_loader)
            p4.log_metrics({"loss": val_loss, "accuracy": val_acc}, step=epoch, context=p4.VALIDATION)
            if rank == 0:
                os.makedirs(ckpt_dir, exist_ok=True)
                path = os.path.join(ckpt_dir, f"epoch-{epoch}.pt")
                torch.save({"epoch": epoch, "model": model.module.state_dict()}, path)
                p4.log_model(
                    model.module,
                    name=f"checkpoint-epoch-{epoch}",
                    path=path,
                    context=p4.TRAINING,
                    step=step,
                    attrs={"epoch": epoch, "val_accuracy": val_acc},
                )
                print(
                    f"epoch {epoch}: val_loss {val_loss:.4f} val_acc {val_acc:.3f} ({world} ranks)",
                    flush=True,
                )
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if rank == 0:
        print("RUN_DIR", run.run_dir, flush=True)


if __name__ == "__main__":
    main()
