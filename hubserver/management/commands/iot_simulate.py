"""``iot_simulate``: django-devicehub's name of ``simulate``, for projects that add the hub's app to their own Django
project (``python manage.py iot_simulate weatherstation --count 5 --realistic``)."""

from .simulate import Command as SimulateCommand


class Command(SimulateCommand):
    help = SimulateCommand.help
