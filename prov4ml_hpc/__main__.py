"""`python -m prov4ml_hpc` is the `prov4ml-hpc` command."""

from .cli import main

main(prog_name="prov4ml-hpc")
