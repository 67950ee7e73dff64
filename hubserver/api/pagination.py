"""Pagination of every generated list: ``?limit=`` (default 100, at most 1000) and ``?offset=``."""

from rest_framework.pagination import LimitOffsetPagination

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class HubPagination(LimitOffsetPagination):
    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT
