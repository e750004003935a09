"""Quality assurance: validators on every output, rolling pass rates, anomaly detection."""
