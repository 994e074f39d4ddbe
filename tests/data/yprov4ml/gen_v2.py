"""Make the yProv4ML 2.0.10 fixture (run once by hand with the real yprov4ml 2.0.10; see README.md)."""

import torch
import torch.nn.functional as F
import yprov4ml as prov4ml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
prov4ml.start_run(
    prov_user_namespace="www.example.org",
    experiment_name="fixture_v2",
    provenance_save_dir="prov",
    save_after_n_logs=100,
    collect_all_processes=True,
    disable_codecarbon=True,
    metrics_file_type=prov4ml.MetricsType.CSV,
)
model = nn.Sequential(nn.Linear(4, 2))
prov4ml.log_param("lr", 0.01)
prov4ml.log_param("optimizer", "SGD")
loader = DataLoader(TensorDataset(torch.rand(12, 4), torch.randint(0, 2, (12,))), batch_size=4)
prov4ml.log_dataset("train_dataset", loader)
prov4ml.create_context("TrainingLOD2", prov4ml.Context.TRAINING)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(2):
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        prov4ml.log_metric("Loss", loss.item(), context=prov4ml.Context.TRAINING, step=epoch)
    prov4ml.log_flops_per_batch("flops_pb", model, (x, y), prov4ml.Context.TRAINING, step=epoch)
    prov4ml.log_current_execution_time("train_step", prov4ml.Context.TRAINING, step=epoch)
    prov4ml.save_model_version("model_version", model, prov4ml.Context.MODELS, epoch)
prov4ml.log_metric("Acc", 0.75, prov4ml.Context.VALIDATION, step=0)
prov4ml.log_metric("nocontext", 1.0)
prov4ml.log_model("model_final", model)
prov4ml.end_run()
