#!/bin/bash
#SBATCH -J "train model v2"
#SBATCH -n 2 -c 2
#SBATCH -t 02:00
#SBATCH --comment "lr=0.1 run two"
#SBATCH -o /tmp/p4s-try/cap/fail-%j.out
srun true
exit 3
