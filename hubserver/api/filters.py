"""Query parameters of the generated API that refuse what they cannot use, saying what they accept: an
unknown ``?ordering=`` field is a 400 (DRF drops it silently), and a time that is not ISO 8601 names the
format (the usual mistake, an unencoded ``+`` in ``+00:00`` that arrives as a space, is repaired)."""

import re

import django_filters
from django_filters.fields import IsoDateTimeField
from rest_framework import filters, serializers

TIME_FORMAT_HELP = (
    "Enter an ISO 8601 time, e.g. 2026-11-29T10:30:00Z or 2026-11-29T10:30:00+01:00 "
    "(in a URL, write + as %2B); a time without an offset is UTC."
)
# A query string decodes an unencoded "+" to a space: "...T10:30:00 01:00" is "...T10:30:00+01:00".
_SPACED_OFFSET = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


class StrictOrderingFilter(filters.OrderingFilter):
    """``?ordering=a,-b``: every field must be one the view orders by, else a 400 listing them."""

    def remove_invalid_fields(self, queryset, fields, view, request):
        valid = [item[0] for item in self.get_valid_fields(queryset, view, {"request": request})]
        unknown = [term for term in fields if term.lstrip("-") not in valid]
        if unknown:
            raise serializers.ValidationError(
                {
                    self.ordering_param: [
                        f"Cannot order by {', '.join(map(repr, unknown))}; order by one of {', '.join(valid)} "
                        "(a leading '-' reverses)."
                    ]
                }
            )
        return fields


class TimeField(IsoDateTimeField):
    default_error_messages = {"invalid": TIME_FORMAT_HELP.replace("%", "%%")}  # formatted with % by Django

    def to_python(self, value):
        if isinstance(value, str):
            value = _SPACED_OFFSET.sub(r"\1+\2", value.strip())
        return super().to_python(value)


class TimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time filter whose error says what it accepts."""

    field_class = TimeField


__all__ = ["TIME_FORMAT_HELP", "StrictOrderingFilter", "TimeField", "TimeFilter"]
