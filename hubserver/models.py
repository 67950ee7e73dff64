"""Abstract bases of the models generated for every DeviceType."""

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from .fields import AuditPayloadField, CompactDateTimeField, UsualValueCharField
from .vocabulary import CommandState, DeviceStatus, Direction


class BaseDevice(models.Model):
    """One physical device. Secrets are stored only as argon2id hashes; the plaintext is shown once."""

    device_id = models.CharField(
        max_length=128,
        unique=True,
        validators=[RegexValidator(r"^[^/+#\x00\s]+$", "A device id is one topic level: no '/', '+', '#' or spaces.")],
    )
    name = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=20, choices=DeviceStatus.CHOICES, default=DeviceStatus.OFFLINE, db_index=True)
    battery_level = models.FloatField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    firmware_version = models.CharField(max_length=64, blank=True)
    is_active = models.BooleanField(default=True)
    mqtt_username = models.CharField(max_length=150, unique=True, null=True, blank=True)
    mqtt_password_hash = models.CharField(max_length=255, blank=True)
    api_key = models.CharField(max_length=255, blank=True, help_text="argon2id hash of the device's API key")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    _device_type_cls = None

    class Meta:
        abstract = True
        ordering = ["device_id"]

    def __str__(self):
        return self.name or self.device_id

    @property
    def device_type(self):
        return self._device_type_cls


class BaseReading(models.Model):
    """One data message's declared readings, one nullable column per Reading."""

    # Integer microseconds on SQLite (see hubserver.fields): a third of the bytes of Django's text.
    timestamp = CompactDateTimeField(db_index=True, default=timezone.now)
    received_at = CompactDateTimeField(default=timezone.now)

    class Meta:
        abstract = True
        ordering = ["-timestamp"]
        get_latest_by = "timestamp"

    def __str__(self):
        return f"{self.device_id} @ {self.timestamp:%Y-%m-%d %H:%M:%S}"


class BaseMessage(models.Model):
    """The audit trail: every message to or from a device, stored before it is interpreted.

    Indexed for what is asked of it (the generated model's ``Meta.indexes``): ``received_at`` (newest first,
    retention), the device (its messages in arrival order), and small partial indexes over the rows that
    are few: failed messages, and outbound commands by device, correlation id and open state. Inbound
    telemetry, nearly every row, costs no entry in those.
    """

    class Direction(models.TextChoices):
        INBOUND = Direction.INBOUND, "Inbound"
        OUTBOUND = Direction.OUTBOUND, "Outbound"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    class CommandStatus(models.TextChoices):
        """An outbound command's life: pending -> sent -> delivered (PUBACK) -> replied, failed or expired."""

        PENDING = CommandState.PENDING, "Pending"
        SENT = CommandState.SENT, "Sent"
        DELIVERED = CommandState.DELIVERED, "Delivered"
        REPLIED = CommandState.REPLIED, "Replied"
        FAILED = CommandState.FAILED, "Failed"
        EXPIRED = CommandState.EXPIRED, "Expired"

    topic = models.CharField(max_length=255)
    # The usual values of these three are stored as '' (see hubserver.fields.UsualValueCharField).
    direction = UsualValueCharField(max_length=8, choices=Direction.choices, default=Direction.INBOUND, usual="inbound")
    # What parsed; the usual data message's keys are stored once (see hubserver.fields.AuditPayloadField).
    payload_json = AuditPayloadField(null=True, blank=True)
    payload_raw = models.BinaryField(null=True, blank=True)
    content_type = UsualValueCharField(max_length=100, default="application/json", usual="application/json")
    correlation_id = models.CharField(max_length=64, blank=True)
    user_properties = models.JSONField(default=dict, blank=True)
    processing_status = UsualValueCharField(
        max_length=12, choices=Status.choices, default=Status.PENDING, usual="completed"
    )
    processing_error = models.TextField(blank=True)
    received_at = CompactDateTimeField(default=timezone.now, db_index=True)
    processed_at = CompactDateTimeField(null=True, blank=True)
    # Outbound commands only: the Command's name, where it is in its life, when it expires, the reply's result.
    command = models.CharField(max_length=64, blank=True)
    command_status = models.CharField(max_length=10, choices=CommandStatus.choices, blank=True)
    expires_at = CompactDateTimeField(null=True, blank=True)
    command_result = models.JSONField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-received_at"]
        get_latest_by = "received_at"

    def __str__(self):
        return f"{self.direction} {self.topic} ({self.processing_status})"

    @property
    def payload_text(self):
        """The raw payload as text, with undecodable bytes escaped, for display."""
        raw = self.payload_raw
        return bytes(raw).decode("utf-8", "backslashreplace") if raw is not None else ""

    def mark_completed(self, save=True):
        self.processing_status = self.Status.COMPLETED
        self.processing_error = ""
        self.processed_at = timezone.now()
        if save:
            self.save(update_fields=["processing_status", "processing_error", "processed_at"])

    def mark_failed(self, error, save=True):
        self.processing_status = self.Status.FAILED
        self.processing_error = str(error)
        self.processed_at = timezone.now()
        if save:
            self.save(update_fields=["processing_status", "processing_error", "processed_at"])


class BaseRollup(models.Model):
    """Downsampled history of one device: per bucket (a minute, an hour or a day, starting at a multiple of
    its length in UTC) the count, minimum, maximum, sum and last value of each numeric Reading.

    The generated model adds ``device`` and, per numeric Reading ``r``, the columns ``r_count``, ``r_min``,
    ``r_max``, ``r_sum``, ``r_last`` and ``r_last_at`` (the timestamp of ``r_last``). The writer keeps the
    rows current in the transaction that stores the readings.
    """

    reading_names = ()  # the numeric Readings it aggregates, in declaration order (set on the generated model)

    bucket = models.PositiveIntegerField(help_text="Length of the bucket in seconds: 60, 3600 or 86400.")
    start = models.DateTimeField(help_text="When the bucket starts (UTC).")

    class Meta:
        abstract = True
        ordering = ["start"]

    def __str__(self):
        return f"{self.device_id} {self.bucket}s @ {self.start:%Y-%m-%d %H:%M}"


class PayloadShape(models.Model):
    """The keys of compact audit payloads (``hubserver.fields.AuditPayloadField``): a row per distinct list of
    keys, in order, that the writer stored once instead of in every message. Never changed or removed."""

    keys = models.TextField(unique=True, help_text="The keys, as a JSON list, in the order the payload had them.")

    def __str__(self):
        return self.keys


class HubAccess(models.Model):
    """Carries the hub's own permissions; it has no table (``managed = False``) and is never queried."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("mqtt_service", "Can connect to MQTT as a service client")]

    def __str__(self):
        return "hub access"


class StorageReport(models.Model):
    """Has no table: the admin's Storage page (``hubserver.lifecycle.admin``), and the permission to see it."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = verbose_name_plural = "storage"

    def __str__(self):
        return "storage"
