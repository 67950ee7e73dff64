"""System checks (``hubserver check``, and before every management command): the ``BROKERS`` entries load
and use only keys their engine reads, and every device type's ``Meta.broker`` names one of them. An entry
whose engine is not available yet is a warning here (``hubserver run`` refuses it)."""

from django.core import checks


@checks.register("hubserver")
def check_brokers(app_configs=None, **kwargs):
    from .brokers.loading import check_brokers as check
    from .exceptions import ConfigurationError

    try:
        found = check()
    except ConfigurationError as exc:  # the HUBSERVER settings themselves are invalid
        return [checks.Error(str(exc), id="hubserver.E001")]
    return [checks.Error(problem, id="hubserver.E001") for problem in found.problems] + [
        checks.Warning(problem, id="hubserver.W001") for problem in found.unavailable
    ]
