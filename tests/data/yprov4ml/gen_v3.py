"""Make the yProv4ML 3.2.8 fixtures (run once by hand with the real yprov4ml 3.2.8; see README.md)."""

import os
import signal
import sys

import torch
import yprov4ml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

RANK = int(os.environ.get("SLURM_PROCID", "0"))
FILE_TYPE = sys.argv[1]  # csv or nc
CRASH_RANK = int(sys.argv[2]) if len(sys.argv) > 2 else -1  # this rank is SIGKILLed before end_run

torch.manual_seed(RANK)
yprov4ml.start_run(
    prov_user_namespace="www.example.org",
    experiment_name=f"fixture_{FILE_TYPE}",
    provenance_save_dir="prov",
    save_after_n_logs=4,
    collect_all_processes=True,
    metrics_file_type=FILE_TYPE,
    use_compressor=False,
    use_run_id=0,
)
yprov4ml.log_execution_command(cmd="python", path="gen_v3.py")
yprov4ml.log_param("lr", 0.01, context="Training", source="config", is_input=True)
yprov4ml.log_param("optimizer", "SGD")
yprov4ml.log_param("layers", [4, 2])
model = nn.Sequential(nn.Linear(4, 2))
data = TensorDataset(torch.rand(16, 4), torch.randint(0, 2, (16,)))
loader = DataLoader(data, batch_size=4, shuffle=True)
yprov4ml.log_dataset("train_dataset", loader, context="Training")
yprov4ml.log_context("TrainingButDifferent", "Training")
loss_fn = yprov4ml.ProvenanceTrackedFunction(nn.CrossEntropyLoss(), context="Training")
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(2):
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        yprov4ml.log_metric("MSE_loss", loss.item(), context="Training", step=epoch)
    yprov4ml.log_flops_per_batch("flops_pb", model, (x, y), "Training", step=epoch)
    yprov4ml.log_metric("acc", 0.5 + epoch / 4)  # no context: the run's root context
    yprov4ml.log_metric("m", float(epoch), context="my_custom_ctx")
    yprov4ml.log_metric("val_loss", 1.0 / (epoch + 1), context="Validation", step=epoch)
    torch.save(model.state_dict(), "ckpt.pt")
    yprov4ml.log_artifact("ckpt", "ckpt.pt", context="Training", step=epoch, log_copy_in_prov_directory=False)
    if RANK == CRASH_RANK and epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
yprov4ml.log_system_metrics("Validation", step=0)
yprov4ml.save_model_version("model_version", model, "Training", step=1)
yprov4ml.log_model("model_final", model)
yprov4ml.end_run()
