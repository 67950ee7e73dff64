"""``iot_listen``: django-devicehub's listener command, for projects that add the hub's app to their own Django
project: ``python manage.py iot_listen --broker default``. It is ``hubserver listen``: the router and the
writer on an external broker, every device topic subscribed (shared), messages acknowledged after commit."""

from .listen import Command as ListenCommand


class Command(ListenCommand):
    help = "Start the MQTT message listener: subscribe to every registered device type's topics and store them."
