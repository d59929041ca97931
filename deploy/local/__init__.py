"""Run the stack's processes on one machine, without Docker: Triton, Redis, worker, gateway."""
