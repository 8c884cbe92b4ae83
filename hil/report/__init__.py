"""Reporting: Allure results through allure-commons, the HTML report (Allure 3 or 2), the
telemetry chart and the nightly run of every target."""
