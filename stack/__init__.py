"""Starting the stack's processes locally and stopping them cleanly: one way for `tritonstack up`, the tests, the
benchmarks and the soak.

- `stack.redis.start_redis`, `stack.triton.start_triton`, `stack.worker.start_worker`, `stack.gateway.start_gateway`:
  one part on chosen ports, ready when the call returns (`stack.gateway.serve_in_thread`: the gateway's server in a
  thread, for tests that read the app's state);
- `stack.up.start_stack(StackOptions)`: any subset of the parts, wired together (ports, keys, routes, rollouts);
- `stack.process`: the child process under all of them (own process group, readiness polling, clean stop);
- `stack.run.supervise`: the foreground loop of `tritonstack up` and `tritonstack triton`.
"""
