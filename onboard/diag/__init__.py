"""GPU and board diagnostics: CUDA check, L4T/JetPack, tegrastats, NVML/nvidia-smi, thermals.

Parsers are pure functions over text, so the framework can reuse them on
telemetry it collects (``onboard.diag.tegrastats.parse_line``) and tests can
feed them real sample lines without a board.
"""
