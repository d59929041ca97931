"""Chat usage accounting: token estimates, per-key budgets (reserve → settle in Redis) and usage totals."""
