"""django-guardian's content type of a topic: a ``ResponseTopic`` is a ``BrokerTopic`` (multi-table
inheritance), and its object permissions are the ``BrokerTopic`` ones (``can_produce``, ...), so they are
stored and looked up under the ``BrokerTopic`` content type (``GUARDIAN_GET_CONTENT_TYPE``)."""

from guardian.ctypes import get_default_content_type


def get_content_type(obj):
    from .models import BrokerTopic, ResponseTopic

    if isinstance(obj, ResponseTopic) or obj is ResponseTopic:
        return get_default_content_type(BrokerTopic)
    return get_default_content_type(obj)
