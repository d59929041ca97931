"""Model version rollout: weighted, sticky canaries between Triton versions of one public model."""
