"""Starting the stack's processes locally (Redis, Triton, the jobs worker, the gateway) and stopping them cleanly.

One way to start a stack, or any part of it: `tritonstack up`, the tests, the benchmarks and the soak use it."""
