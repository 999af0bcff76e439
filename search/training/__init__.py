"""Training: the data on the device, the trainer, the distillation teacher, the shared dense bases, checkpoints, and
:func:`search.training.run.run_candidate`, which trains one candidate from start to end."""
