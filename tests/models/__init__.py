"""Tests of the model zoo: backbones, architectures, registry-wide checks."""
