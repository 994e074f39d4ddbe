"""Holds sitecustomize.py, put on PYTHONPATH by the job templates (see prov4ml_hpc.hook); not imported."""
