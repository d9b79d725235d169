"""harness: reproduce the CNNs of five CIFAR-10 write-ups as tracked MLflow runs."""

__version__ = "0.1.0"
