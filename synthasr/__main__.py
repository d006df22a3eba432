"""``python -m synthasr ...`` runs the CLI; torchrun needs this: ``torchrun --nproc_per_node 2 -m synthasr train ...``."""
from synthasr.cli import main

main()
