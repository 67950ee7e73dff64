"""Date and time formats of the hub's pages in English: ISO-like and compact, so the admin's lists of devices,
readings and messages keep their columns on one line (Django's own "Nov. 30, 2026, 12:12 a.m." does not)."""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
TIME_FORMAT = "H:i:s"
