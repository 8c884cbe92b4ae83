"""pytest-hil: hardware-in-the-loop test orchestration for pytest.

Kept free of imports: ``hil.worker`` runs inside containers where nothing but
pytest is guaranteed, and importing it loads this module first.
"""

__version__ = "0.1.0"
