"""Onboard software under test: inference runtimes, a flight-data recorder, GPU diagnostics.

This package ships with pytest-hil as the software its suites exercise on a
target.  It never imports ``hil``: it must run alone on a board or inside a
container where only its own dependencies are installed.  Heavy libraries
(torch, tensorrt, onnxruntime, onnx) are imported lazily, where they are used.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
