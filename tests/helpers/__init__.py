"""Support code shared by the tests (no tests here): CLI runs, the tiny model, waits, references, the Slurm cluster."""
