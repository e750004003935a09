"""Alerting: rules over router signals, a state machine per alert, history and handlers."""
