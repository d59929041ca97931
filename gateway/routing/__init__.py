"""Chat routing: the routes file, deployments, circuit breakers and the fallback dispatcher."""
