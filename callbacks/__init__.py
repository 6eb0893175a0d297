"""Lightning callbacks: thin glue between the Trainer, the envs and the DataModule."""
