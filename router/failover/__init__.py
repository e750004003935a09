"""Failover: circuit breakers, retry budgets, deadline shares and the attempt loop."""
