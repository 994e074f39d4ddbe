"""The embedded default job: a small data-parallel training (a numpy MLP classifier) on N local MPI ranks.

``prov4ml-hpc demo`` launches ``python -m prov4ml_hpc.demo --train`` under ``mpiexec -n N``.  Rank 0 writes
a synthetic dataset (a teacher network's labels; one file every rank logs as its input); each rank trains
on its shard, gradients are averaged with one MPI Allreduce per step, and the run records what a real
training does: parameters, per-step loss/accuracy/learning rate, per-epoch validation and test scores, a
checkpoint per epoch (rank 0, ``log_artifact``) and the final model (``log_model``).  With the defaults it
takes about 15-30 s on 2 cores, long enough for the system, energy and provenance sections of the report to
show something true.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

N_FEATURES, N_CLASSES, HIDDEN = 32, 10, 512
N_HELD_OUT = 2048  # validation and test samples each


def _dataset(path: str, n_train: int, seed: int) -> None:
    """Labels of a random "teacher" network on Gaussian inputs (2% flipped), float32, in one .npz file: a
    task an MLP learns gradually (validation accuracy rises over the epochs), not in a few steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = n_train + 2 * N_HELD_OUT
    w1 = rng.normal(size=(N_FEATURES, 32)) / np.sqrt(N_FEATURES)
    w2 = rng.normal(size=(32, N_CLASSES)) / np.sqrt(32)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = np.argmax(np.tanh(0.7 * (x @ w1)) @ w2, axis=1)
    flip = rng.random(n) < 0.02
    y[flip] = rng.integers(0, N_CLASSES, size=int(flip.sum()))
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, y=y.astype(np.int64), n_train=n_train)
    os.replace(tmp, path)


class MLP:
    """Two hidden ReLU layers and a softmax, trained with SGD and momentum; parameters in one flat buffer."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        shapes = [
            (N_FEATURES, HIDDEN),
            (HIDDEN,),
            (HIDDEN, HIDDEN),
            (HIDDEN,),
            (HIDDEN, N_CLASSES),
            (N_CLASSES,),
        ]
        self.flat = np.zeros(sum(int(np.prod(s)) for s in shapes), np.float32)
        self.params, self.grads = [], []
        self.grad_flat = np.zeros_like(self.flat)
        self.velocity = np.zeros_like(self.flat)
        off = 0
        for s in shapes:
            n = int(np.prod(s))
            p = self.flat[off : off + n].reshape(s)
            if len(s) == 2:
                p[...] = rng.normal(size=s) * np.sqrt(2.0 / s[0])
            self.params.append(p)
            self.grads.append(self.grad_flat[off : off + n].reshape(s))
            off += n

    def forward(self, x: Any) -> tuple[Any, list[Any]]:
        import numpy as np

        w1, b1, w2, b2, w3, b3 = self.params
        h1 = np.maximum(x @ w1 + b1, 0)
        h2 = np.maximum(h1 @ w2 + b2, 0)
        logits = h2 @ w3 + b3
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p, [x, h1, h2]

    def backward(self, p: Any, cache: list[Any], y: Any) -> None:
        """Gradients of the mean cross-entropy into ``grad_flat``."""
        import numpy as np

        x, h1, h2 = cache
        _, _, w2, _, w3, _ = self.params
        g1, gb1, g2, gb2, g3, gb3 = self.grads
        d = p.copy()
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        g3[...] = h2.T @ d
        gb3[...] = d.sum(axis=0)
        d = (d @ w3.T) * (h2 > 0)
        g2[...] = h1.T @ d
        gb2[...] = d.sum(axis=0)
        d = (d @ w2.T) * (h1 > 0)
        g1[...] = x.T @ d
        gb1[...] = d.sum(axis=0)

    def step(self, lr: float, momentum: float = 0.9) -> None:
        self.velocity *= momentum
        self.velocity -= lr * self.grad_flat
        self.flat += self.velocity


def _scores(model: MLP, x: Any, y: Any) -> tuple[float, float, int]:
    """(sum of losses, correct predictions, samples) of one split."""
    import numpy as np

    p, _ = model.forward(x)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).sum())
    return loss, float((p.argmax(axis=1) == y).sum()), len(y)


def train(epochs: int, steps_per_epoch: int, batch: int, lr: float, seed: int) -> None:
    import math

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
    data_dir = os.path.join(run.run_dir, "data")
    data_path = os.path.join(data_dir, "teacher-labels.npz")
    if rank == 0:
        os.makedirs(data_dir, exist_ok=True)
        _dataset(data_path, steps_per_epoch * batch * size, seed)
    if comm is not None:
        comm.Barrier()
    with np.load(data_path) as f:
        x_all, y_all, n_train = f["x"], f["y"], int(f["n_train"])
    shard = slice(rank * n_train // size, (rank + 1) * n_train // size)
    x, y = x_all[shard], y_all[shard]
    held = slice(n_train + rank * N_HELD_OUT // size, n_train + (rank + 1) * N_HELD_OUT // size)
    x_val, y_val = x_all[held], y_all[held]
    test = slice(
        n_train + N_HELD_OUT + rank * N_HELD_OUT // size,
        n_train + N_HELD_OUT + (rank + 1) * N_HELD_OUT // size,
    )
    x_test, y_test = x_all[test], y_all[test]
    p4.log_dataset(
        name="teacher-labels",
        path=data_path,
        attrs={
            "samples": len(y_all),
            "train": n_train,
            "features": N_FEATURES,
            "classes": N_CLASSES,
            "seed": seed,
        },
    )
    p4.log_params(
        {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch,
            "lr": lr,
            "momentum": 0.9,
            "schedule": "cosine",
            "seed": seed,
            "world_size": size,
            "model": f"mlp {N_FEATURES}-{HIDDEN}-{HIDDEN}-{N_CLASSES}",
        }
    )
    model = MLP(seed)  # the same initial weights on every rank
    local_rng = np.random.default_rng(seed + 1 + rank)
    total_steps, step = epochs * steps_per_epoch, 0
    reduced = np.empty_like(model.grad_flat)
    ckpt_dir = os.path.join(run.run_dir, "checkpoints")
    for epoch in range(epochs):
        order = local_rng.permutation(len(y))
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]  # the shard is steps_per_epoch batches: one pass
            xb, yb = x[idx], y[idx]
            p, cache = model.forward(xb)
            model.backward(p, cache, yb)
            if comm is not None:
                comm.Allreduce(model.grad_flat, reduced)
                model.grad_flat[...] = reduced / size
            step_lr = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total_steps)))
            model.step(step_lr)
            loss = float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean())
            acc = float((p.argmax(axis=1) == yb).mean())
            p4.log_metrics({"loss": loss, "accuracy": acc, "lr": step_lr}, step=step)
            step += 1
        val, tst = np.array(_scores(model, x_val, y_val)), np.array(_scores(model, x_test, y_test))
        if comm is not None:  # each rank scored its part of the held-out splits: add them up
            comm.Allreduce(val.copy(), val)
            comm.Allreduce(tst.copy(), tst)
        p4.log_metrics(
            {"val_loss": val[0] / val[2], "val_accuracy": val[1] / val[2]}, step=epoch, context=p4.VALIDATION
        )
        p4.log_metrics(
            {"test_loss": tst[0] / tst[2], "test_accuracy": tst[1] / tst[2]}, step=epoch, context=p4.TESTING
        )
        if rank == 0:  # data parallel: every rank holds the same weights; one writes the checkpoint
            os.makedirs(ckpt_dir, exist_ok=True)
            ckpt = os.path.join(ckpt_dir, f"epoch-{epoch:03d}.npy")
            np.save(ckpt, model.flat)
            p4.log_artifact(
                ckpt,
                name="checkpoint",
                step=epoch,
                context=p4.TRAINING,
                attrs={"epoch": epoch, "val_accuracy": val[1] / val[2]},
            )
    if rank == 0:
        final = os.path.join(ckpt_dir, "model-final.npy")
        np.save(final, model.flat)
        p4.log_model(
            name="mlp",
            path=final,
            attrs={
                "epochs": epochs,
                "parameters": int(model.flat.size),
                "test_accuracy": tst[1] / tst[2],
            },
        )
    p4.end_run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prov4ml_hpc.demo", description=__doc__)
    parser.add_argument("--train", action="store_true", help="run one rank of the demo training")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not args.train:
        parser.error("use `prov4ml-hpc demo` to launch the demo; --train runs one rank of it")
    if min(args.epochs, args.steps_per_epoch, args.batch) < 1:
        parser.error("--epochs, --steps-per-epoch and --batch must be at least 1")
    train(args.epochs, args.steps_per_epoch, args.batch, args.lr, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
