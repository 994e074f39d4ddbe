"""The embedded default job: a small data-parallel training (numpy logistic regression) on N local MPI ranks.

``prov4ml-hpc demo`` launches ``python -m prov4ml_hpc.demo --train`` under ``mpiexec -n N``; each rank trains
on its shard of a synthetic dataset, averages gradients with MPI when mpi4py is there, and logs parameters,
per-step loss/accuracy, per-epoch validation metrics, the dataset and a checkpoint artifact.
"""

from __future__ import annotations

import argparse
import os
import sys


def train(epochs: int, steps_per_epoch: int, batch: int, lr: float, seed: int) -> None:
    import numpy as np

    import prov4ml_hpc as p4

    comm = None
    try:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
    except ImportError:
        pass
    run = p4.start_run("demo")
    rank, size = run.global_rank, run.world_size
    rng = np.random.default_rng(seed)
    n_features, n_samples = 20, 4096
    true_w = rng.normal(size=n_features)
    x_all = rng.normal(size=(n_samples, n_features))
    y_all = (x_all @ true_w + 0.5 * rng.normal(size=n_samples) > 0).astype(np.float64)
    shard = slice(rank * n_samples // size, (rank + 1) * n_samples // size)
    x, y = x_all[shard], y_all[shard]
    x_val, y_val = x_all[-512:], y_all[-512:]
    data_path = os.path.join(run.run_dir, "artifacts", f"dataset-rank{rank:05d}.npz")
    os.makedirs(os.path.dirname(data_path), exist_ok=True)
    np.savez(data_path, x=x, y=y)
    p4.log_dataset(
        name="synthetic-logistic", path=data_path, attrs={"samples": int(len(y)), "features": n_features}
    )
    p4.log_params(
        {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch,
            "lr": lr,
            "seed": seed,
            "world_size": size,
            "model": "logistic-regression",
        }
    )
    w = np.zeros(n_features)
    step = 0
    local_rng = np.random.default_rng(seed + rank)
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            idx = local_rng.integers(0, len(y), size=batch)
            xb, yb = x[idx], y[idx]
            p = 1.0 / (1.0 + np.exp(-(xb @ w)))
            grad = xb.T @ (p - yb) / batch
            if comm is not None:
                total = np.empty_like(grad)
                comm.Allreduce(grad, total)
                grad = total / size
            w -= lr * grad
            loss = float(-np.mean(yb * np.log(p + 1e-12) + (1 - yb) * np.log(1 - p + 1e-12)))
            p4.log_metric("loss", loss, step=step)
            p4.log_metric("accuracy", float(np.mean((p > 0.5) == yb)), step=step)
            step += 1
        pv = 1.0 / (1.0 + np.exp(-(x_val @ w)))
        p4.log_metric("val_accuracy", float(np.mean((pv > 0.5) == y_val)), step=epoch, context=p4.VALIDATION)
        p4.log_metric("epoch", epoch, step=step)
    ckpt = os.path.join(run.run_dir, "artifacts", f"weights-rank{rank:05d}.npy")
    np.save(ckpt, w)
    p4.log_model(name="logistic-weights", path=ckpt, attrs={"epochs": epochs})
    p4.end_run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prov4ml_hpc.demo", description=__doc__)
    parser.add_argument("--train", action="store_true", help="run one rank of the demo training")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not args.train:
        parser.error("use `prov4ml-hpc demo` to launch the demo; --train runs one rank of it")
    train(args.epochs, args.steps_per_epoch, args.batch, args.lr, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
