"""``iot_provision``: django-devicehub's bulk provisioning command, for projects that add the hub's app to their own
Django project: ``python manage.py iot_provision weatherstation --count 50 --prefix ws- --format csv``.

It is ``hubserver provision TYPE --count N`` (same numbering, output and rotation rules) with django-devicehub's
options: ``device_type``, ``--count`` (default 1), ``--prefix``, ``--format``.
"""

from .provision import FORMATS
from .provision import Command as ProvisionCommand


class Command(ProvisionCommand):
    help = (
        "Bulk provision devices with credentials: iot_provision TYPE [--count N] [--prefix P] "
        "[--format csv|json|table]. Creates (or rotates) P0001..PNNNN and prints their secrets once."
    )

    def add_arguments(self, parser):
        parser.add_argument("device_type", help="a registered device type, any spelling")
        parser.add_argument("--count", type=int, default=1, help="how many devices (default 1)")
        parser.add_argument("--prefix", help="device id prefix (default: '<type>-')")
        parser.add_argument("--start", type=int, default=1, help="first number (default 1)")
        parser.add_argument("--format", choices=FORMATS, help="output format (default csv)")
        parser.add_argument("--workers", type=int, help="hashing threads (default: the CPU count)")

    def handle(self, *args, device_type, **options):
        return super().handle(*args, type=device_type, device_id=None, **options)
