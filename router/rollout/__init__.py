"""Rollouts decided once for the fleet: the state file every replica applies, the store that
writes it atomically, the decision rule and the controller that runs it."""
