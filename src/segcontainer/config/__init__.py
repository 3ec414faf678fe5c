"""What SageMaker hands the container at start: /opt/ml paths, config files, hyperparameters."""
