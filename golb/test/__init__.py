"""
golb's tests.

Hypothesis runs with no deadline and without the too-slow health check: the
suite runs two trial workers on two cores, where the first draws of a
strategy can be slow for reasons that are not the code's.
"""

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover (hypothesis is a test dependency)
    pass
else:
    settings.register_profile(
        "golb", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("golb")
