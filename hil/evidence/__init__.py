"""GPU evidence: did a tier2 test really use the GPU?

``samples`` reads the GPU fields of telemetry samples and keeps the live ones
(``FEED``); ``verdict`` turns a test's window of samples into its evidence and
judges it; ``local`` samples the GPUs of this host for the ``local`` target;
``allure`` writes the evidence into the run's Allure results; ``plugin`` is
the pytest plugin that ties them to each test's report (see
``docs/gpu-evidence.md``).
"""
