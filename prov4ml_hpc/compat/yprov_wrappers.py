"""yProv4ML's wrappers for the drop-in: ProvenanceTrackedFunction, ProvenanceTrackedModel, WeightDistributionTrackedModel.

- ``ProvenanceTrackedFunction(fn, context)`` logs each return value as metric ``type(fn).__name__`` (step = the
  call count, source = the same name), as yProv4ML.
- ``ProvenanceTrackedModel(label, model, context)`` records the inputs and outputs of every Linear/Conv layer
  on each forward (float16, as yProv4ML) into ``artifacts/rank-NNNNN/<label>_activations.h5`` (yProv4ML: a zarr
  store in the current directory, copied at exit), written by a background thread, and logs that file as an
  output artifact at end_run.
- ``WeightDistributionTrackedModel(label, model, context)``: ``log_epoch(epoch)`` takes mean, std, min, max and
  quartiles of each layer's weights; the table goes to ``artifacts/rank-NNNNN/<label>_weight_dist.h5``, logged
  as an output artifact at end_run.
The two model classes subclass ``torch.nn.Module`` and are made when first asked for (torch is imported then).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from .yprov_run import STATE, get_artifacts_dir, once

STAT_KEYS = ("mean", "std", "min", "max", "p25", "p50", "p75")
QUEUE_SIZE = 1024


class ProvenanceTrackedFunction:
    """Call ``fn`` and log each result (a 0-d tensor as its ``item()``) as a metric of ``context``."""

    def __init__(self, func: Any, context: Any = None) -> None:
        self.fn = func
        self.context = context
        self.source = type(func).__name__
        self.inc = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .yprov_core import log_metric

        result = self.fn(*args, **kwargs)
        value = result.item() if getattr(result, "ndim", None) == 0 and hasattr(result, "item") else result
        log_metric(self.source, value, context=self.context, step=self.inc, source=self.source)
        self.inc += 1
        return result


def _artifact(label: str, path: str, context: Any) -> None:
    from .yprov_files import log_artifact

    log_artifact(label, path, context=context, source="yProv4ML", log_copy_in_prov_directory=False)


class _ActivationWriter(threading.Thread):
    """Writes queued (layer, inputs, outputs) batches to one HDF5 file, one resizable dataset per tensor."""

    def __init__(self, path: str) -> None:
        super().__init__(name="prov4ml-hpc-activations", daemon=True)
        self.path = path
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        import h5py
        import numpy as np

        try:
            with h5py.File(self.path, "w", locking=False) as f:
                while (item := self.queue.get()) is not None:
                    name, inp, out = item
                    for part, tensor in (("input", inp), ("output", out)):
                        data = tensor.to("cpu").numpy().astype(np.float16)
                        key = f"{name or 'model'}/{part}"
                        if key not in f:
                            f.create_dataset(key, data=data, maxshape=(None, *data.shape[1:]), chunks=True)
                            continue
                        ds = f[key]
                        n = ds.shape[0]
                        ds.resize(n + data.shape[0], axis=0)
                        ds[n:] = data
        except BaseException as exc:  # noqa: BLE001 - reported at close; training goes on
            self.error = exc
            while self.queue.get() is not None:  # drain so that forward() never blocks on a dead writer
                pass


def _tracked_classes() -> dict[str, type]:
    import torch
    from torch import nn

    class ProvenanceTrackedModel(nn.Module):
        """``model`` with forward hooks that record every Linear/Conv layer's inputs and outputs."""

        def __init__(
            self, model_label: Any, model: Any = None, context: Any = None, chunk_size: int = 64
        ) -> None:
            super().__init__()
            if model is None and isinstance(model_label, nn.Module):  # ProvenanceTrackedModel(model)
                model_label, model = type(model_label).__name__, model_label
            self.model = model
            self.model_name = str(model_label)
            self.context = context
            self.chunk_size = chunk_size
            self.model_path = os.path.join(get_artifacts_dir() or ".", f"{self.model_name}_activations.h5")
            self.writer = _ActivationWriter(self.model_path)
            self.handles = [
                module.register_forward_hook(self._hook(name))
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
            ]
            self._closed = False
            STATE.closers.append(self.close)

        def _hook(self, name: str):
            def hook(module: Any, inputs: Any, output: Any) -> None:
                if not self._closed and isinstance(output, torch.Tensor):
                    self.writer.queue.put((name, inputs[0].detach(), output.detach()))

            return hook

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.model(*args, **kwargs)

        def close(self) -> None:
            """Stop recording, finish the file and log it as an output artifact (end_run does this)."""
            if self._closed:
                return
            self._closed = True
            for handle in self.handles:
                handle.remove()
            self.writer.queue.put(None)
            self.writer.join()
            if self.writer.error is not None:
                once(
                    "activations",
                    "ProvenanceTrackedModel: writing %s failed: %r",
                    self.model_path,
                    self.writer.error,
                )
            if os.path.exists(self.model_path):
                _artifact(self.model_name, self.model_path, self.context)

    class WeightDistributionTrackedModel(nn.Module):
        """``model`` whose ``log_epoch(epoch)`` records each weight layer's distribution (7 statistics)."""

        LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.LayerNorm) + (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
        )

        def __init__(self, model_label: str, model: Any, context: Any = None, chunk_size: int = 64) -> None:
            super().__init__()
            self.model = model
            self.model_name = str(model_label)
            self.context = context
            self.chunk_size = chunk_size
            self.model_path = os.path.join(get_artifacts_dir() or ".", f"{self.model_name}_weight_dist.h5")
            self.epochs: list[int] = []
            self.stats: dict[str, list[list[float]]] = {}
            self._tracked = {
                name: m
                for name, m in model.named_modules()
                if isinstance(m, self.LAYERS) and any(p.requires_grad for p in m.parameters(recurse=False))
            }
            self._closed = False
            STATE.closers.append(self.close)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.model(*args, **kwargs)

        def log_epoch(self, epoch: int) -> None:
            """Take the statistics of every tracked layer's weights now, for ``epoch``."""
            self.epochs.append(int(epoch))
            q = torch.tensor([0.25, 0.5, 0.75])
            for name, module in self._tracked.items():
                ws = [
                    p.detach().float().cpu().flatten()
                    for n, p in module.named_parameters(recurse=False)
                    if "weight" in n
                ]
                if not ws:
                    continue
                w = torch.cat(ws)
                qs = torch.quantile(w, q) if w.numel() else torch.full((3,), float("nan"))
                row = [w.mean(), w.std(), w.min(), w.max(), qs[0], qs[1], qs[2]]
                self.stats.setdefault(name, []).append([float(x) for x in row])

        def close(self) -> None:
            """Write the statistics table and log it as an output artifact (end_run does this)."""
            if self._closed or not self.epochs:
                return
            self._closed = True
            import h5py
            import numpy as np

            with h5py.File(self.model_path, "w", locking=False) as f:
                f.attrs["stats"] = list(STAT_KEYS)
                f.create_dataset("epochs", data=np.asarray(self.epochs, dtype=np.int64))
                for name, rows in self.stats.items():
                    f.create_dataset(f"layers/{name or 'model'}", data=np.asarray(rows, dtype=np.float32))
            _artifact(self.model_name, self.model_path, self.context)

    return {
        "ProvenanceTrackedModel": ProvenanceTrackedModel,
        "WeightDistributionTrackedModel": WeightDistributionTrackedModel,
    }


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in ("ProvenanceTrackedModel", "WeightDistributionTrackedModel"):
        if not _CLASSES:
            _CLASSES.update(_tracked_classes())
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
