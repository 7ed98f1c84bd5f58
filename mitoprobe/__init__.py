"""mitoprobe: which foundation model and which head best tell atypical from normal mitoses."""

__version__ = "0.1.0"
